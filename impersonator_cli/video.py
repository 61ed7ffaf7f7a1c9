"""Video I/O through the ffmpeg binary: probe, decode to RGB frames, encode H.264 with audio.

Commands are built with ffmpeg-python as argument lists (never shell strings) and run with the
binary from `find_ffmpeg()`. Every child's stderr is drained by a thread, so ffmpeg can never
block on a full pipe, and its tail goes into our errors' `detail`.

Conventions:
- Frames are RGB uint8 arrays, H x W x 3, upright (ffmpeg applies rotation metadata),
  converted from YUV by ffmpeg's default rgb24 path, as the official pipeline's frame
  extraction (`ffmpeg -i video %d.png`) did; resizing is cv2.resize INTER_LINEAR as in the
  official code.
- `VideoInfo.rotation` is the clockwise turn (0/90/180/270) a player applies to display the
  stored frames (the old `rotate` tag); width/height are the displayed ones.
- Frame count, duration and average fps come from the video packets' timestamps (one demux
  pass, no decoding): fps = frames / (last frame end - first frame start), the clock the `fps`
  filter uses, so a VFR file resampled at that rate yields its own frame count.
- The writer pads odd widths/heights to even by repeating the last column/row (yuv420p needs
  even sizes) and writes to a hidden temp file renamed into place only on success.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple, Union

import ffmpeg
import numpy as np

from .errors import (
    EncodeError,
    EnvironmentProblem,
    InputError,
    OutputError,
    UsageError,
    VideoDecodeError,
    stderr_tail,
)
from .images import PathArg, is_image_path, natural_key, read_image, reserve_partial_path, resize_rgb, write_image

__all__ = [
    "VideoInfo", "FfmpegInfo", "FrameSource", "VideoWriter", "find_ffmpeg", "find_ffprobe",
    "ffmpeg_info", "probe", "read_frames", "write_image",
]

LOGLEVEL = "error"  # ffmpeg -loglevel for decoding/encoding children (raise it to debug ffmpeg)
DEFAULT_IMAGE_FPS = Fraction(25)  # rate given to image folders when none is asked (ffmpeg's default)
_INSTALL_HINT = "Install it with `pip install imageio-ffmpeg` or `apt install ffmpeg`, or set IMPERSONATE_FFMPEG."
_COMMON_RATES = [Fraction(r) for r in (24, 25, 30, 48, 50, 60, 120)]
SizeArg = Union[int, Tuple[int, int], None]


# ----------------------------------------------------------------------------- binaries


def find_ffmpeg() -> str:
    """Path of the ffmpeg binary: $IMPERSONATE_FFMPEG, else `ffmpeg` on PATH, else imageio-ffmpeg's."""
    env = os.environ.get("IMPERSONATE_FFMPEG")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise EnvironmentProblem("IMPERSONATE_FFMPEG does not name an executable file", path=env,
                                     hint=_INSTALL_HINT)
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise EnvironmentProblem("ffmpeg was not found", hint=_INSTALL_HINT, detail=str(exc)) from exc


def find_ffprobe() -> Optional[str]:
    """Path of ffprobe ($IMPERSONATE_FFPROBE, else on PATH), or None: everything works without it."""
    env = os.environ.get("IMPERSONATE_FFPROBE")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise EnvironmentProblem("IMPERSONATE_FFPROBE does not name an executable file", path=env)
        return env
    return shutil.which("ffprobe")


@dataclass(frozen=True)
class FfmpegInfo:
    """What `impersonate doctor` reports about ffmpeg."""

    path: str
    version: str
    libx264: bool
    h264_nvenc: bool  # listed only: a usable NVIDIA GPU and driver are still needed
    aac: bool
    ffprobe: Optional[str]


@functools.lru_cache(maxsize=8)
def _version_line(exe: str) -> str:
    out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return out.stdout.splitlines()[0] if out.stdout else ""


def ffmpeg_info() -> FfmpegInfo:
    """Locate ffmpeg and list the encoders we use."""
    exe = find_ffmpeg()
    enc = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    names = {ln.split()[1] for ln in enc.stdout.splitlines() if len(ln.split()) > 1}
    return FfmpegInfo(exe, _version_line(exe), "libx264" in names, "h264_nvenc" in names, "aac" in names,
                      find_ffprobe())


def _sync_passthrough(exe: str) -> dict:
    """Output option that emits every decoded frame once (-fps_mode needs ffmpeg >= 5.1)."""
    m = re.search(r"version n?(\d+)\.(\d+)", _version_line(exe))
    old = m is not None and (int(m.group(1)), int(m.group(2))) < (5, 1)
    return {"vsync": "passthrough"} if old else {"fps_mode": "passthrough"}


# ----------------------------------------------------------------------------- child processes


class _Child:
    """A running ffmpeg whose stderr is drained by a thread into a bounded buffer."""

    def __init__(self, args: Sequence[str], stdin=None, stdout=None) -> None:
        self.args = list(args)
        self._lines: collections.deque = collections.deque(maxlen=400)
        self.stderr_bytes = 0
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal Ctrl-C reaches us, and we stop ffmpeg ourselves
        )
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            self.stderr_bytes += len(raw)
            self._lines.append(raw.decode("utf-8", errors="replace").rstrip())
        self.proc.stderr.close()

    def stderr_text(self) -> str:
        self._drain.join(timeout=5)
        return "\n".join(self._lines)

    def tail(self) -> str:
        return stderr_tail(self.stderr_text())

    def kill(self) -> None:
        """Stop ffmpeg now, reap it and close our pipe ends (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self.proc.wait()
        self._drain.join(timeout=5)


# ----------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds. width/height as displayed (after rotation); fps is the exact average rate."""

    path: str
    width: int
    height: int
    fps: Fraction
    frame_count: int
    duration: float  # seconds of video (first frame start to last frame end)
    rotation: int  # clockwise degrees a player turns the stored frames: 0, 90, 180 or 270
    has_audio: bool
    audio_duration: Optional[float]  # seconds, None without audio
    pix_fmt: str
    codec: str
    vfr: bool = False  # frame intervals vary by more than 1 %


@dataclass(frozen=True)
class _Meta:
    """Stream metadata of a file (before timing is measured). Sizes are as stored (coded)."""

    codec: str
    pix_fmt: str
    coded_width: int
    coded_height: int
    rotation: int
    has_audio: bool


def _clockwise(ccw_degrees: float) -> int:
    return int(round(-ccw_degrees / 90.0)) * 90 % 360


def _split_top(text: str) -> list:
    """Split on commas outside parentheses/brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


_PREFIX = re.compile(r"^(\[[^\]]*\] ?)+")
_STREAM = re.compile(r"^\s*Stream #\d+:\d+\S*: (Video|Audio|Data|Subtitle|Attachment): (.*)$")


def _strip_prefix(line: str) -> str:
    """Drop ffmpeg's '[info] ' / '[mov @ 0x..] [error] ' prefixes (keep indentation)."""
    m = _PREFIX.match(line)
    return line[m.end():] if m else line


def _meta_from_dump(text: str) -> Optional[_Meta]:
    """Parse `ffmpeg -i` stderr: first (non cover-art) video stream, rotation, audio presence."""
    video, rotation, has_audio, current = None, 0, False, None
    for raw in text.splitlines():
        line = _strip_prefix(raw)
        m = _STREAM.match(line)
        if m:
            current = None
            if m.group(1) == "Audio":
                has_audio = True
            elif m.group(1) == "Video" and video is None and "(attached pic)" not in line:
                video = current = _split_top(m.group(2))
            continue
        if current is None:
            continue
        dm = re.search(r"(?i)display ?matrix: rotation of (-?[\d.]+) degrees", line)
        tag = re.match(r"^\s+rotate\s*:\s*(-?\d+)\s*$", line)
        if dm:
            rotation = _clockwise(float(dm.group(1)))
        elif tag and rotation == 0:
            rotation = int(tag.group(1)) % 360
    if video is None:
        return None
    dims = next((re.match(r"(\d+)x(\d+)", p) for p in video[1:] if re.match(r"\d+x\d+", p)), None)
    pix_fmt = video[1].split("(")[0].strip() if len(video) > 1 and not re.match(r"\d+x\d+", video[1]) else "unknown"
    w, h = (int(dims.group(1)), int(dims.group(2))) if dims else (0, 0)
    return _Meta(video[0].split()[0], pix_fmt, w, h, rotation, has_audio)


def _meta_from_ffprobe(data: dict) -> Optional[_Meta]:
    """Parse `ffprobe -print_format json -show_streams` output the same way as `_meta_from_dump`."""
    streams = data.get("streams", [])
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")),
        None,
    )
    if video is None:
        return None
    rotation = int(video.get("tags", {}).get("rotate", 0)) % 360
    for side in video.get("side_data_list", []):
        if "rotation" in side:
            rotation = _clockwise(float(side["rotation"]))
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    return _Meta(
        video.get("codec_name", "unknown"), video.get("pix_fmt", "unknown"),
        int(video.get("width", 0)), int(video.get("height", 0)), rotation, has_audio,
    )


@dataclass(frozen=True)
class _Packets:
    """Timestamps of one stream's packets (in its time base), discarded ones removed."""

    time_base: Fraction
    pts: np.ndarray  # N
    dur: np.ndarray  # N

    def span(self) -> int:
        """Ticks from the earliest start to the latest end (0-length packets get the median step)."""
        order = np.sort(self.pts)
        step = int(np.median(np.diff(order))) if len(order) > 1 else 0
        dur = np.where(self.dur > 0, self.dur, step)
        return int((self.pts + dur).max() - self.pts.min())


def _parse_framecrc(text: str) -> dict:
    """{output stream index: _Packets} from ffmpeg's framecrc muxer output."""
    tbs, rows = {}, collections.defaultdict(list)
    for line in text.splitlines():
        m = re.match(r"#tb (\d+): (\d+)/(\d+)", line)
        if m:
            tbs[int(m.group(1))] = Fraction(int(m.group(2)), int(m.group(3)))
            continue
        if not line or line[0] == "#":
            continue
        f = line.split(",")
        flags = re.search(r"F=0x([0-9a-fA-F]+)", line)
        if flags and int(flags.group(1), 16) & 4:  # AV_PKT_FLAG_DISCARD (e.g. AAC priming)
            continue
        dts, pts = int(f[1]), int(f[2])
        rows[int(f[0])].append((pts if pts > -(2**62) else dts, int(f[3])))
    table = {}
    for k, v in rows.items():
        pts, dur = np.array(v, np.int64).reshape(-1, 2).T
        table[k] = _Packets(tbs.get(k, Fraction(1)), pts, dur)
    return table


def _average_fps(pk: _Packets) -> tuple:
    """(average fps as an exact Fraction, is VFR). Constant-rate files measured in a coarse time
    base (e.g. 1 ms) snap to the common rate (30, 30000/1001 ...) within one tick of error."""
    n, span = len(pk.pts), pk.span()
    if span <= 0:
        return DEFAULT_IMAGE_FPS, False
    fps = Fraction(n, 1) / (span * pk.time_base)
    steps = np.diff(np.sort(pk.pts))
    vfr = len(steps) > 1 and (steps.max() - steps.min()) > max(1, 0.01 * float(np.median(steps)))
    if vfr:
        return fps.limit_denominator(10000), True
    tolerance = float(fps) / span  # one tick over the whole span
    candidates = [c for r in _COMMON_RATES for c in (r, r * 1000 / 1001)] + [Fraction(round(fps))]
    best = min(candidates, key=lambda c: abs(c - fps))
    return (best if abs(float(best - fps)) <= tolerance else fps), False


_DAMAGE = re.compile(r"(?i)partial file|truncat|corrupt|invalid data|moov atom not found|error while decoding")


def _run_probe(path: Path) -> tuple:
    """Run one demux pass: returns (rc, stdout framecrc text, stderr text)."""
    inp = ffmpeg.input(str(path))
    args = ffmpeg.output(inp["v:0"], inp["a:0?"], "pipe:", format="framecrc", c="copy").compile(
        cmd=[find_ffmpeg(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info"]
    )
    out = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL)
    return out.returncode, out.stdout.decode("utf-8", "replace"), out.stderr.decode("utf-8", "replace")


def _ffprobe_meta(path: Path, exe: str) -> Optional[_Meta]:
    args = [exe, "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)]
    out = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL)
    try:
        return _meta_from_ffprobe(json.loads(out.stdout or b"{}"))
    except (ValueError, TypeError):
        return None


def _check_file(path: Path, what: str = "video") -> None:
    if not path.exists():
        raise InputError(f"Cannot find the {what}", path=path, hint="Check the path and spelling.")
    if path.is_dir():
        raise InputError(f"Expected a {what} file but got a folder", path=path)


def probe(path: PathArg) -> VideoInfo:
    """Inspect a video file. Raises InputError (missing, no video stream, no frames) or
    VideoDecodeError (unreadable, damaged, truncated) naming the file, with ffmpeg's stderr tail."""
    path = Path(path)
    _check_file(path)
    rc, crc, err = _run_probe(path)
    ffprobe = find_ffprobe()
    meta = (_ffprobe_meta(path, ffprobe) if ffprobe else None) or _meta_from_dump(err)
    raw_lines = err.splitlines()
    errors = [_strip_prefix(ln) for ln in raw_lines if "[error]" in ln or "[fatal]" in ln]
    err = "\n".join(_strip_prefix(ln) for ln in raw_lines)
    if "Input #0" not in err:
        raise VideoDecodeError("ffmpeg cannot open this file as a video (damaged or not a video)", path=path,
                               hint="Check that it plays in a video player.", detail=stderr_tail(err))
    if meta is None:
        raise InputError("The file has no video stream", path=path, hint="Pass a video file.", detail=stderr_tail(err))
    damaged = [ln for ln in errors if _DAMAGE.search(ln)]
    if rc != 0 or damaged:
        raise VideoDecodeError("The video is damaged or truncated", path=path,
                               hint="Re-download or re-export it.", detail=stderr_tail("\n".join(errors) or err))
    packets = _parse_framecrc(crc)
    video = packets.get(0)
    if video is None or len(video.pts) == 0:
        raise InputError("The video contains no frames", path=path, hint="Pass a video with at least one frame.",
                         detail=stderr_tail(err))
    return _info(path, meta, video, packets.get(1))


def _info(path: Path, meta: _Meta, video: _Packets, audio: Optional[_Packets]) -> VideoInfo:
    fps, vfr = _average_fps(video)
    w, h = meta.coded_width, meta.coded_height
    if meta.rotation in (90, 270):
        w, h = h, w
    audio_duration = float(audio.span() * audio.time_base) if audio is not None and len(audio.pts) else None
    return VideoInfo(
        str(path), w, h, fps, len(video.pts), float(video.span() * video.time_base), meta.rotation,
        audio_duration is not None, audio_duration, meta.pix_fmt, meta.codec, bool(vfr),
    )


def has_audio(path: PathArg) -> bool:
    """Whether a media file (video or audio-only) has an audio stream."""
    path = Path(path)
    _check_file(path, "media file")
    args = [find_ffmpeg(), "-hide_banner", "-nostdin", "-i", str(path)]  # no output: header only
    err = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL).stderr.decode("utf-8", "replace")
    if "Input #0" not in err:
        raise VideoDecodeError("ffmpeg cannot open this file", path=path, detail=stderr_tail(err))
    return any(_STREAM.match(ln) and ": Audio: " in ln for ln in map(_strip_prefix, err.splitlines()))


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
    expected_frames: how many will come (exact for images, within about one frame for video).
    Leaving the `with` block (or breaking out of the loop) stops and reaps the decoder.
    """

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
        resample = fps is not None or info.vfr
        out_fps = Fraction(fps) if fps is not None else info.fps
        super().__init__(info, size or (info.width, info.height), out_fps, 0)
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
    rate (VFR videos are always resampled to their average rate); for images, the rate they get.
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
    gives a silent output. Output goes to a hidden temp file beside `path`, renamed into place
    when `close()` succeeds; on any exception (Ctrl-C included) ffmpeg is killed and the temp file
    removed. Writing no frame at all raises OutputError and creates nothing.
    """

    def __init__(self, path: PathArg, fps: Union[Fraction, int, float, str], size: SizeArg = None, crf: int = 18,
                 audio_from: Optional[PathArg] = None, audio_start: float = 0.0,
                 audio_duration: Optional[float] = None, codec: str = "libx264", preset: str = "medium",
                 overwrite: bool = True) -> None:
        self.path, self.fps, self.size = Path(path), _exact_fps(fps), _parse_size(size)
        if self.path.suffix.lower() not in _WRITABLE:
            raise UsageError(f"Cannot write video to '{self.path.name}': use one of {', '.join(_WRITABLE)}.")
        if not self.path.parent.is_dir():
            raise OutputError("The output folder does not exist", path=self.path.parent, hint="Create it first.")
        if not overwrite and self.path.exists():
            raise OutputError("The output already exists", path=self.path, hint="Pass --overwrite or another name.")
        if not 0 <= crf <= 51:
            raise UsageError(f"crf must be in 0..51, got {crf}.")
        self.crf, self.codec, self.preset = crf, codec, preset
        self.audio_from = Path(audio_from) if audio_from is not None and has_audio(audio_from) else None
        self.audio_start, self.audio_duration = audio_start, audio_duration
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
            streams.append(ffmpeg.input(str(self.audio_from), **src)["a:0"].filter("apad"))
            out.update(acodec="aac", audio_bitrate="192k", shortest=None)
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
            os.replace(self._tmp, self.path)
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
        if self._child is not None:
            self._child.kill()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.abort()
        except Exception:
            pass
