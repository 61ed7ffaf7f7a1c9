"""Locate the ffmpeg binaries, run ffmpeg children safely and probe video files.

Every child's stderr is drained by a thread, so ffmpeg can never block on a full pipe, and its
tail goes into our errors' `detail`.

Conventions:
- `VideoInfo.rotation` is the clockwise turn (0/90/180/270) a player applies to display the
  stored frames (the old `rotate` tag); width/height are the displayed ones.
- Frame count, duration and fps come from the video packets' presentation timestamps (one demux
  pass, no decoding). A constant-rate file's fps is exact (snapped to the common rate it was made
  at). A variable-rate (VFR) file keeps each frame's time in `frame_times`; its fps is the display
  rate of `timing.py`, the constant rate its frames are shown at, each held for its own duration.
  Packet durations are not trusted for VFR: with B-frames they are decode-order steps.
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
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import ffmpeg
import numpy as np

from impersonator_cli.errors import EnvironmentProblem, InputError, VideoDecodeError, stderr_tail
from impersonator_cli.io import timing
from impersonator_cli.io.images import PathArg

__all__ = ["VideoInfo", "FfmpegInfo", "find_ffmpeg", "find_ffprobe", "ffmpeg_info", "probe", "has_audio"]

DEFAULT_IMAGE_FPS = Fraction(25)  # rate given to image folders when none is asked (ffmpeg's default)
_INSTALL_HINT = "Install it with `pip install imageio-ffmpeg` or `apt install ffmpeg`, or set IMPERSONATE_FFMPEG."
_COMMON_RATES = [Fraction(r) for r in timing.STANDARD_RATES]

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
    # VFR only: each frame's presentation time, seconds from the first frame (float64, ascending)
    frame_times: Optional[np.ndarray] = field(default=None, compare=False, repr=False)


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

    def times(self) -> np.ndarray:
        """Presentation times in display order, seconds from the first frame."""
        order = np.sort(self.pts)
        return (order - order[0]).astype(np.float64) * float(self.time_base)


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


def _constant_fps(pk: _Packets) -> Fraction:
    """A constant-rate stream's fps as an exact Fraction. Files measured in a coarse time base
    (e.g. 1 ms) snap to the common rate (30, 30000/1001 ...) within one tick of error."""
    n, span = len(pk.pts), pk.span()
    if span <= 0:
        return DEFAULT_IMAGE_FPS
    fps = Fraction(n, 1) / (span * pk.time_base)
    tolerance = float(fps) / span  # one tick over the whole span
    candidates = [c for r in _COMMON_RATES for c in (r, r * 1000 / 1001)] + [Fraction(round(fps))]
    best = min(candidates, key=lambda c: abs(c - fps))
    return best if abs(float(best - fps)) <= tolerance else fps


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


def _timing(video: _Packets) -> tuple:
    """(fps, duration in seconds, frame times or None for a constant rate)."""
    times = video.times()
    if not timing.is_variable(times, tick=float(video.time_base)):
        return _constant_fps(video), float(video.span() * video.time_base), None
    fps = timing.display_rate(times)
    return fps, timing.span(times, 1 / float(fps)), times


def _info(path: Path, meta: _Meta, video: _Packets, audio: Optional[_Packets]) -> VideoInfo:
    fps, duration, times = _timing(video)
    w, h = meta.coded_width, meta.coded_height
    if meta.rotation in (90, 270):
        w, h = h, w
    audio_duration = float(audio.span() * audio.time_base) if audio is not None and len(audio.pts) else None
    return VideoInfo(
        str(path), w, h, fps, len(video.pts), duration, meta.rotation, audio_duration is not None,
        audio_duration, meta.pix_fmt, meta.codec, times is not None, times,
    )


def has_audio(path: PathArg) -> bool:
    """Whether a media file (video or audio-only) has an audio stream."""
    path = Path(path)
    _check_file(path, "media")
    args = [find_ffmpeg(), "-hide_banner", "-nostdin", "-i", str(path)]  # no output: header only
    err = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL).stderr.decode("utf-8", "replace")
    if "Input #0" not in err:
        raise VideoDecodeError("ffmpeg cannot open this file", path=path, detail=stderr_tail(err))
    return any(_STREAM.match(ln) and ": Audio: " in ln for ln in map(_strip_prefix, err.splitlines()))
