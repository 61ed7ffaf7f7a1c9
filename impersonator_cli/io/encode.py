"""Encoding frames to H.264 video through the ffmpeg binary, with another file's audio.

- The writer pads odd widths/heights to even by repeating the last column/row (yuv420p needs
  even sizes) and writes to a hidden temp file moved into place only on success (`io/publish.py`).
- Colour: BT.709, limited range, box-filtered chroma: the closest round trip through `io/video.py`.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import ffmpeg
import numpy as np

from impersonator_cli.errors import EncodeError, EnvironmentProblem, OutputError, UsageError
from impersonator_cli.io.images import PathArg, reserve_partial_path
from impersonator_cli.io.probe import _Child, _INSTALL_HINT, find_ffmpeg, has_audio
from impersonator_cli.io.publish import publish
from impersonator_cli.io.video import LOGLEVEL, SizeArg, parse_size

__all__ = ["VideoWriter"]


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
        self.path, self.fps, self.size = Path(path), _exact_fps(fps), parse_size(size)
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
