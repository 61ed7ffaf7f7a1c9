"""Video I/O through the ffmpeg binary: decode to RGB frames, encode H.264 with audio.

Commands are built with ffmpeg-python as argument lists (never shell strings) and run with the
binary from `find_ffmpeg()`; binary lookup, child processes and probing live in `video_probe`
(its public names are re-exported here).

Conventions:
- Frames are RGB uint8 arrays, H x W x 3, upright (ffmpeg applies rotation metadata),
  converted from YUV by ffmpeg's default rgb24 path, as the official pipeline's frame
  extraction (`ffmpeg -i video %d.png`) did; resizing is cv2.resize INTER_LINEAR as in the
  official code.
- The writer pads odd widths/heights to even by repeating the last column/row (yuv420p needs
  even sizes) and writes to a hidden temp file renamed into place only on success.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import ffmpeg
import numpy as np

from impersonator_cli.errors import (
    EncodeError, EnvironmentProblem, InputError, OutputError, UsageError, VideoDecodeError,
)
from impersonator_cli.io import timing
from impersonator_cli.io.images import (
    PathArg, is_image_path, natural_key, read_image, reserve_partial_path, resize_rgb,
)
from impersonator_cli.io.publish import publish
from impersonator_cli.io.probe import (
    DEFAULT_IMAGE_FPS, VideoInfo, _check_file, _Child, _INSTALL_HINT, _sync_passthrough, find_ffmpeg, has_audio, probe,
)

__all__ = ["FrameSource", "VideoWriter", "read_frames"]

LOGLEVEL = "error"  # ffmpeg -loglevel for decoding/encoding children (raise it to debug ffmpeg)
SizeArg = Union[int, Tuple[int, int], None]


# ----------------------------------------------------------------------------- reading frames


def _parse_size(size: SizeArg) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if w <= 0 or h <= 0:
        raise UsageError(f"Frame size must be positive, got {w}x{h}.")
    return w, h


def _read_into(stream, buf: memoryview) -> int:
    """Fill `buf` from a pipe; returns the bytes read (less than len(buf) only at end of stream)."""
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


class FrameSource:
    """Frames as RGB uint8 arrays (H x W x 3) from a video, an image folder or a single image.

    Use as ``with read_frames(src) as frames: for frame in frames: ...`` (iterable once).
    info: the source as stored; size: (w, h) of the frames yielded; fps: their rate;
    expected_frames: how many will come (exact for images and VFR video, within about one frame
    for constant-rate video). times: None when frame i is shown at i / fps after the start; for a
    variable-rate video, each yielded frame's time in seconds from the video's first frame (see
    io/timing.py for how such frames are shown on a constant-rate output).
    Leaving the `with` block (or breaking out of the loop) stops and reaps the decoder.
    """

    times: Optional[np.ndarray] = None

    def __init__(self, info: VideoInfo, size: Tuple[int, int], fps: Fraction, expected_frames: int) -> None:
        self.info, self.size, self.fps, self.expected_frames = info, size, fps, expected_frames
        self._used = False

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._used:
            raise RuntimeError("A FrameSource can be iterated only once; open the source again.")
        self._used = True
        return self._frames()

    def __len__(self) -> int:
        return self.expected_frames

    def close(self) -> None:
        """Release the decoder (idempotent)."""

    def _frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _VideoFrames(FrameSource):
    def __init__(self, info: VideoInfo, size, start: float, duration, max_frames, fps) -> None:
        resample = fps is not None
        out_fps = Fraction(fps) if fps is not None else info.fps
        super().__init__(info, size or (info.width, info.height), out_fps, 0)
        self._pick: Optional[np.ndarray] = None
        if info.frame_times is not None and not resample:  # VFR: every frame once, picked by its time
            self._pick = timing.select(info.frame_times, start, duration, max_frames)
            self.times = info.frame_times[self._pick]
            self.expected_frames = len(self._pick)
            self._args = self._command(0.0, None, None, False)
        else:
            self.expected_frames = self._estimate(start, duration, max_frames, resample)
            self._args = self._command(start, duration, max_frames, resample)
        self._child: Optional[_Child] = None

    def _estimate(self, start, duration, max_frames, resample) -> int:
        n = self.info.frame_count
        if resample or start > 0 or duration is not None:
            avail = max(0.0, self.info.duration - start)
            avail = avail if duration is None else min(avail, duration)
            n = int(round(avail * self.fps))
        return n if max_frames is None else min(n, max_frames)

    def _command(self, start, duration, max_frames, resample) -> list:
        exe = find_ffmpeg()
        v = ffmpeg.input(self.info.path, **({"ss": start} if start > 0 else {}))["v:0"]
        if resample:
            v = v.filter("fps", fps=f"{self.fps.numerator}/{self.fps.denominator}")
        out = {"format": "rawvideo", "pix_fmt": "rgb24", **_sync_passthrough(exe)}
        if duration is not None:
            out["t"] = duration
        if max_frames is not None:
            out["frames:v"] = max_frames
        return ffmpeg.output(v, "pipe:", **out).compile(
            cmd=[exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", LOGLEVEL]
        )

    def _frames(self) -> Iterator[np.ndarray]:
        frames = self._decoded()
        if self._pick is None:
            yield from frames
            return
        wanted, last = set(self._pick.tolist()), int(self._pick[-1]) if len(self._pick) else -1
        for index, frame in enumerate(frames):
            if index in wanted:
                yield frame
            if index >= last:
                frames.close()
                return
        if last >= 0:  # the probe counted more frames than the decoder gave
            raise self._error(f"The video gave fewer frames than its {self.info.frame_count} timestamps")

    def _decoded(self) -> Iterator[np.ndarray]:
        self._child = child = _Child(self._args, stdout=subprocess.PIPE)
        w, h = self.info.width, self.info.height
        try:
            while True:
                frame = np.empty((h, w, 3), np.uint8)
                got = _read_into(child.proc.stdout, memoryview(frame).cast("B"))
                if got == 0:
                    break
                if got < frame.nbytes:
                    child.proc.wait()
                    raise self._error("The video ended in the middle of a frame")
                yield frame if self.size == (w, h) else resize_rgb(frame, self.size)
            if child.proc.wait() != 0:
                raise self._error("ffmpeg failed while decoding the video")
        finally:
            self.close()

    def _error(self, message: str) -> VideoDecodeError:
        return VideoDecodeError(message, path=self.info.path, hint="The file may be damaged; re-export it.",
                                detail=self._child.tail() if self._child else None)

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _ImageFrames(FrameSource):
    def __init__(self, root: Path, files: list, size, start: float, duration, max_frames, fps) -> None:
        rate = Fraction(fps) if fps is not None else DEFAULT_IMAGE_FPS
        h0, w0 = read_image(files[0]).shape[:2]
        info = VideoInfo(str(root), w0, h0, rate, len(files), float(len(files) / rate), 0, False, None,
                         "rgb24", "image")
        begin = int(round(start * rate))
        stop = len(files) if duration is None else min(len(files), begin + int(round(duration * rate)))
        if max_frames is not None:
            stop = min(stop, begin + max_frames)
        self._files, self._resize = files[begin:stop], size is not None
        super().__init__(info, size or (w0, h0), rate, len(self._files))

    def _frames(self) -> Iterator[np.ndarray]:
        w, h = self.size
        for path in self._files:
            img = read_image(path)
            if img.shape[:2] == (h, w):
                yield img
                continue
            if not self._resize:
                raise InputError(f"Image size {img.shape[1]}x{img.shape[0]} differs from the first frame's "
                                 f"{w}x{h}", path=path, hint="Make all frames one size, or pass a frame size.")
            yield resize_rgb(img, (w, h))


def _image_files(folder: Path) -> list:
    files = [p for p in folder.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith(".")]
    if not files:
        raise InputError("The folder holds no images", path=folder, hint="Put .png/.jpg/.webp/.bmp frames in it.")
    return sorted(files, key=lambda p: natural_key(p.name))


def read_frames(src: PathArg, size: SizeArg = None, start: float = 0.0, duration: Optional[float] = None,
                max_frames: Optional[int] = None, fps: Union[Fraction, int, str, None] = None) -> FrameSource:
    """Open a frame source: a video file, a folder of images (natural order) or one image.

    size: (w, h) or an int for a square; frames are resized to exactly that with
    cv2.resize(INTER_LINEAR), aspect not kept: the official implementation's preprocessing.
    start/duration: seconds. max_frames: stop after that many. fps: resample a video to this
    rate with ffmpeg's fps filter; for images, the rate they get. Without it, a variable-rate video
    yields every frame once, with its time in `.times`.
    """
    size_wh = _parse_size(size)
    if start < 0 or (duration is not None and duration <= 0) or (max_frames is not None and max_frames < 0):
        raise UsageError("start must be >= 0, duration > 0 and max_frames >= 0.")
    if fps is not None and Fraction(fps) <= 0:
        raise UsageError(f"fps must be positive, got {fps}.")
    src = Path(src)
    if src.is_dir():
        return _ImageFrames(src, _image_files(src), size_wh, start, duration, max_frames, fps)
    if is_image_path(src):
        _check_file(src, "image")
        return _ImageFrames(src, [src], size_wh, start, duration, max_frames, fps)
    return _VideoFrames(probe(src), size_wh, start, duration, max_frames, fps)


# ----------------------------------------------------------------------------- writing


_NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                  "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7"}
_WRITABLE = (".mp4", ".mov", ".m4v", ".mkv")


def _exact_fps(fps: Union[Fraction, int, float, str]) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001000) if isinstance(fps, float) else Fraction(fps)
    if rate <= 0:
        raise UsageError(f"The frame rate must be positive, got {fps}.")
    return rate


def _even_pad(frames: np.ndarray) -> np.ndarray:
    """N x H x W x 3 -> N x H' x W' x 3 with H', W' even, repeating the last row/column."""
    dh, dw = frames.shape[1] % 2, frames.shape[2] % 2
    if not (dh or dw):
        return frames
    return np.pad(frames, ((0, 0), (0, dh), (0, dw), (0, 0)), mode="edge")


def _codec_options(codec: str, crf: int, preset: str) -> dict:
    if "nvenc" in codec:
        return {"preset": _NVENC_PRESETS.get(preset, preset), "rc": "vbr", "cq": crf, "b:v": 0}
    if codec == "libx264":
        return {"preset": preset, "crf": crf}
    return {}


class VideoWriter:
    """Encode RGB uint8 frames (H x W x 3) to H.264/yuv420p, optionally with another file's audio.

    ``with VideoWriter("out.mp4", Fraction(30000, 1001)) as w: w.write(frame)``. The size comes
    from `size` or the first frame; odd sizes are padded to even by repeating the last row/column.
    Audio (AAC) is taken from `audio_from` starting at `audio_start` seconds (for at most
    `audio_duration`), padded with silence or cut so it ends with the video; a file without audio
    gives a silent output. `length`: the seconds of video that will be written, when known: the sound
    is then made exactly that long, so the file does not depend on the pipe's timing. Output goes to a hidden temp file beside `path`, moved into place
    when `close()` succeeds (`io.publish`: with overwrite=False a file that appeared at `path`
    meanwhile is never replaced, OutputError instead); on any exception (Ctrl-C included) the temp
    file is removed and ffmpeg killed. Writing no frame at all raises OutputError and creates nothing.
    """

    def __init__(self, path: PathArg, fps: Union[Fraction, int, float, str], size: SizeArg = None, crf: int = 18,
                 audio_from: Optional[PathArg] = None, audio_start: float = 0.0,
                 audio_duration: Optional[float] = None, codec: str = "libx264", preset: str = "medium",
                 overwrite: bool = True, length: Optional[float] = None) -> None:
        self.path, self.fps, self.size = Path(path), _exact_fps(fps), _parse_size(size)
        if self.path.suffix.lower() not in _WRITABLE:
            raise UsageError(f"Cannot write video to '{self.path.name}': use one of {', '.join(_WRITABLE)}.")
        if not self.path.parent.is_dir():
            raise OutputError("The output folder does not exist", path=self.path.parent, hint="Create it first.")
        if not overwrite and self.path.exists():
            raise OutputError("The output already exists", path=self.path, hint="Pass --overwrite or another name.")
        self.overwrite = overwrite
        if not 0 <= crf <= 51:
            raise UsageError(f"crf must be in 0..51, got {crf}.")
        self.crf, self.codec, self.preset = crf, codec, preset
        self.audio_from = Path(audio_from) if audio_from is not None and has_audio(audio_from) else None
        self.audio_start = float(audio_start)
        self.audio_duration = None if audio_duration is None else float(audio_duration)
        self.length = None if length is None else float(length)
        self.frames_written = 0
        self._child: Optional[_Child] = None
        self._tmp: Optional[Path] = None
        self._closed = False

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _command(self, width: int, height: int) -> list:
        fps = f"{self.fps.numerator}/{self.fps.denominator}"
        v = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
        # Box-filtered chroma and accurate rounding: the closest round trip through our reader.
        v = v.filter("scale", out_color_matrix="bt709", out_range="tv", flags="area+accurate_rnd")
        v = v.filter("format", "yuv420p")
        streams, out = [v], {"vcodec": self.codec, "pix_fmt": "yuv420p", "colorspace": "bt709",
                             "color_primaries": "bt709", "color_trc": "bt709", "color_range": "tv",
                             **_codec_options(self.codec, self.crf, self.preset)}
        if self.path.suffix.lower() in (".mp4", ".mov", ".m4v"):
            out["movflags"] = "+faststart"
        if self.audio_from is not None:
            src = {"ss": self.audio_start} if self.audio_start > 0 else {}
            if self.audio_duration is not None:
                src["t"] = self.audio_duration
            audio = ffmpeg.input(str(self.audio_from), **src)["a:0"]
            if self.length is not None:
                # Exactly the video's length, whatever the pipe's timing (-shortest depends on when
                # ffmpeg sees the video end, so two runs could keep different amounts of sound).
                audio = audio.filter("apad", whole_dur=self.length).filter("atrim", end=self.length)
                out.update(acodec="aac", audio_bitrate="192k")
            else:
                out.update(acodec="aac", audio_bitrate="192k", shortest=None)
                audio = audio.filter("apad")
            streams.append(audio)
        return ffmpeg.output(*streams, str(self._tmp), **out).compile(
            cmd=[find_ffmpeg(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", LOGLEVEL, "-y"]
        )

    def _start(self, width: int, height: int) -> None:
        self._tmp = reserve_partial_path(self.path)
        try:
            self._child = _Child(self._command(width + width % 2, height + height % 2), stdin=subprocess.PIPE)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise EnvironmentProblem("Cannot start ffmpeg", hint=_INSTALL_HINT, detail=str(exc)) from exc
            raise

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H x W x 3) or a batch (N x H x W x 3), RGB uint8."""
        if self._closed:
            raise RuntimeError("This VideoWriter is closed.")
        arr = np.asarray(frames)
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"Expected RGB uint8 frames (N x H x W x 3), got {arr.shape} {arr.dtype}.")
        if self.size is None:
            self.size = (arr.shape[2], arr.shape[1])
        if (arr.shape[2], arr.shape[1]) != self.size:
            raise ValueError(f"Frame size {arr.shape[2]}x{arr.shape[1]} differs from the video's "
                             f"{self.size[0]}x{self.size[1]}.")
        if self._child is None:
            self._start(*self.size)
        try:
            self._child.proc.stdin.write(np.ascontiguousarray(_even_pad(arr)).data)
        except OSError as exc:  # ffmpeg exited (bad option, unavailable encoder, disk full ...)
            raise self._failure("ffmpeg stopped while encoding the video") from exc
        except BaseException:
            self.abort()
            raise
        self.frames_written += len(arr)

    def _failure(self, message: str) -> EncodeError:
        try:
            self._child.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        detail = self._child.tail()
        self.abort()
        return EncodeError(message, path=self.path, detail=detail,
                           hint=f"Check that this ffmpeg can encode with {self.codec} (`impersonate doctor`).")

    def close(self) -> Path:
        """Finish encoding and move the file into place; returns its path."""
        if self._closed:
            return self.path
        if self._child is None:
            self.abort()
            raise OutputError("No frames were written, so no video was saved", path=self.path,
                              hint="Check that the input has frames.")
        try:
            self._child.proc.stdin.close()
        except OSError:
            pass
        try:
            if self._child.proc.wait() != 0:
                raise self._failure("ffmpeg failed to finish the video")
            publish(self._tmp, self.path, self.overwrite)
            self._tmp = None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._child.kill()
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file; the output path is left untouched (idempotent)."""
        self._closed = True
        if self._tmp is not None:  # first: a second Ctrl-C during the kill must not leave the file
            self._tmp.unlink(missing_ok=True)  # (ffmpeg may still write: to a file with no name)
            self._tmp = None
        if self._child is not None:
            self._child.kill()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.abort()
        except Exception:
            pass
