"""Generate tiny test media with the real ffmpeg binary (lavfi sources), into a caller's folder.

Every clip is small (64x48-ish, a second or two) so tests stay fast. Rotation is given the way
phones store it: the clockwise turn a player applies (the old `rotate` tag).
"""

from __future__ import annotations

import random
import subprocess
from fractions import Fraction
from pathlib import Path

from impersonator_cli.io.probe import find_ffmpeg


def run_ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; raise with its stderr if it fails."""
    cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{out.stderr.decode(errors='replace')}")


def _rate(fps) -> str:
    f = Fraction(fps)
    return f"{f.numerator}/{f.denominator}"


def make_clip(path, size=(64, 48), fps="30000/1001", frames=30, audio=True, audio_seconds=None,
              rotation=0, source="testsrc2", pix_fmt="yuv420p") -> Path:
    """A clip of `frames` frames at exactly `fps`; with a 440 Hz tone lasting the video (or
    `audio_seconds`); `rotation` (clockwise degrees) stored as display-matrix metadata.
    Odd sizes need pix_fmt="yuv444p" (4:2:0 cannot store them)."""
    path = Path(path)
    w, h = size
    seconds = float(frames / Fraction(fps)) if audio_seconds is None else audio_seconds
    video_src = f"{source}=size={w}x{h}:rate={_rate(fps)}" if source == "testsrc2" else source
    args = ["-f", "lavfi", "-i", f"{video_src},scale={w}:{h}"]  # testsrc2 itself rounds sizes to even
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    args += ["-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt]
    if audio:
        args += ["-c:a", "aac"]
    target = path if not rotation else path.with_name(f"unrotated-{path.name}")
    run_ffmpeg(*args, target)
    if rotation:
        # -display_rotation counts counter-clockwise; phones' tag counts clockwise.
        run_ffmpeg("-display_rotation:v:0", str(-rotation), "-i", target, "-c", "copy", path)
        target.unlink()
    return path


def make_marker_clip(path, size=(64, 48), frames=3, rotation=0) -> Path:
    """Black frames with a white 16x8 box in the stored top-left corner."""
    w, h = size
    src = f"color=black:size={w}x{h}:rate=30,drawbox=x=0:y=0:w=16:h=8:color=white:t=fill"
    return make_clip(path, size, 30, frames, audio=False, rotation=rotation, source=src)


def make_vfr_clip(path, size=(64, 48), frames=45) -> Path:
    """VFR: the first 30 frames 1/30 s apart, the rest 1/15 s apart (mp4 keeps the timestamps)."""
    w, h = size
    run_ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=30", "-frames:v", str(frames),
        "-vf", "setpts='if(lt(N,30),N/30,1+(N-30)/15)/TB'", "-fps_mode", "vfr",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", path,
    )
    return Path(path)


PHONE_TIMES = tuple([i / 25 for i in range(25)] + [2.48 + 0.1 * i for i in range(5)])


def phone_level(i: int) -> int:
    """The luma of frame i of `make_phone_vfr` (video range, so it survives the RGB round trip)."""
    return 40 + 6 * i


def make_phone_vfr(path, bframes: int = 0, audio: bool = True, size=(64, 48), fast: int = 25, slow: int = 5) -> Path:
    """A phone that slowed its capture: `fast` frames 1/25 s apart, then `slow` frames at 2.48 s + 0.1 s k
    (PHONE_TIMES for the defaults); frame i is flat grey at luma `phone_level(i)`, so a decoded frame
    tells its index. With a 440 Hz tone lasting 3 s when `audio`."""
    w, h = size
    pts = f"if(lt(N,{fast}),N/25,2.48+(N-{fast})/10)"
    args = ["-f", "lavfi", "-i", f"color=black:size={w}x{h}:rate=25,geq=lum='40+6*N':cb=128:cr=128"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=3"]
    args += ["-frames:v", str(fast + slow), "-vf", f"settb=1/1000,setpts='{pts}/TB'", "-fps_mode", "vfr",
             "-enc_time_base:v", "1/1000", "-c:v", "libx264", "-bf", str(bframes), "-preset", "ultrafast",
             "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac"]
    run_ffmpeg(*args, path)
    return Path(path)


def make_truncated(src, path, keep=0.5) -> Path:
    """`src` remuxed with the index first (faststart) and then cut to `keep` of its bytes."""
    path = Path(path)
    full = path.with_name(f"full-{path.name}")
    run_ffmpeg("-i", src, "-c", "copy", "-movflags", "+faststart", full)
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    full.unlink()
    return path


def make_index_cut(src, path) -> Path:
    """Truncated before any packet data: the header promises frames, none can be read."""
    path = Path(path)
    make_truncated(src, path, keep=1.0)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"mdat") + 4])
    return path


def make_damaged_tail(src, path, start=0.5, seed=0) -> Path:
    """`src` with its index first and random bytes from `start` (fraction) to the end: the
    header and first frames are fine, decoding fails part-way."""
    path = Path(path)
    make_truncated(src, path, keep=1.0)
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for i in range(int(len(data) * start), len(data)):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))
    return path


def make_garbage(path, n_bytes=5000, seed=0) -> Path:
    """Random bytes under a video name."""
    rng = random.Random(seed)
    Path(path).write_bytes(bytes(rng.randrange(256) for _ in range(n_bytes)))
    return Path(path)


def make_zero_frame(path) -> Path:
    """What ffmpeg writes when asked for 0 frames: a valid mp4 with no frames (and no tracks)."""
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30", "-frames:v", "0", "-c:v", "libx264", path)
    return Path(path)


def make_audio_only(path, seconds=1.0) -> Path:
    run_ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}", "-c:a", "aac", path)
    return Path(path)
