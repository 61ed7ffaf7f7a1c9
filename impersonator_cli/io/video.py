"""Reading frames through the ffmpeg binary: videos, image folders and single images as RGB frames.

Commands are built with ffmpeg-python as argument lists (never shell strings) and run with the
binary from `find_ffmpeg()`; binary lookup, child processes and probing live in `io/probe.py`, and
encoding in `io/encode.py`.

Conventions:
- Frames are RGB uint8 arrays, H x W x 3, upright (ffmpeg applies rotation metadata),
  converted from YUV by ffmpeg's default rgb24 path, as the official pipeline's frame
  extraction (`ffmpeg -i video %d.png`) did; resizing is cv2.resize INTER_LINEAR as in the
  official code.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import ffmpeg
import numpy as np

from impersonator_cli.errors import InputError, UsageError, VideoDecodeError
from impersonator_cli.io import timing
from impersonator_cli.io.images import PathArg, is_image_path, natural_key, read_image, resize_rgb
from impersonator_cli.io.probe import (
    DEFAULT_IMAGE_FPS, VideoInfo, _check_file, _Child, _sync_passthrough, find_ffmpeg, probe,
)

__all__ = ["FrameSource", "read_frames", "parse_size"]

LOGLEVEL = "error"  # ffmpeg -loglevel for decoding/encoding children (raise it to debug ffmpeg)
SizeArg = Union[int, Tuple[int, int], None]


# ----------------------------------------------------------------------------- reading frames


def parse_size(size: SizeArg) -> Optional[Tuple[int, int]]:
    """(w, h) from an int (a square) or a pair; None stays None. UsageError unless positive."""
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
        if not len(self._pick):
            return
        first, last = int(self._pick[0]), int(self._pick[-1])  # timing.select keeps one run of frames
        for index, frame in enumerate(frames):
            if index >= first:
                yield frame
            if index == last:
                frames.close()
                return
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
    size_wh = parse_size(size)
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
