"""Video I/O against the real ffmpeg binary, on tiny generated clips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from impersonator_cli.io import probe as P
from impersonator_cli.io import encode as E
from impersonator_cli.io import video as V
from impersonator_cli.errors import EnvironmentProblem, InputError, OutputError, VideoDecodeError
from impersonator_cli.io.images import write_image

try:
    from . import media
except ImportError:
    from support import media as media

NTSC = Fraction(30000, 1001)


def read_all(src, **kw) -> np.ndarray:
    with V.read_frames(src, **kw) as frames:
        return np.stack(list(frames))


def no_leftovers(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial-" in p.name]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """45 frames at 30000/1001 with a tone lasting the video."""
    return media.make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=45)


# ----------------------------------------------------------------------------- probe


def test_probe_reports_exact_rate_count_and_audio(clip):
    info = P.probe(clip)
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.fps == NTSC and isinstance(info.fps, Fraction)
    assert info.frame_count == 45 and not info.vfr
    assert info.duration == pytest.approx(45 * 1001 / 30000, abs=1e-6)
    assert info.has_audio and info.audio_duration == pytest.approx(info.duration, abs=0.05)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")


@pytest.mark.parametrize("ext", ["mkv", "ts"])
def test_probe_snaps_coarse_time_bases_to_the_exact_rate(tmp_path, ext):
    """Matroska counts whole milliseconds (33/34 ms steps for 30000/1001); MPEG-TS 90 kHz is exact."""
    info = P.probe(media.make_clip(tmp_path / f"clip.{ext}", frames=45))
    assert info.fps == NTSC and info.frame_count == 45 and not info.vfr
    assert sum(1 for _ in V.read_frames(tmp_path / f"clip.{ext}")) == 45


@pytest.mark.parametrize("make", ["truncated", "index_cut", "garbage", "zero_frame", "audio_only", "missing", "folder"])
def test_unreadable_inputs_raise_input_error_naming_the_file(tmp_path, clip, make):
    path = tmp_path / f"bad-{make}.mp4"
    makers = {
        "truncated": lambda: media.make_truncated(clip, path, keep=0.5),
        "index_cut": lambda: media.make_index_cut(clip, path),
        "garbage": lambda: media.make_garbage(path),
        "zero_frame": lambda: media.make_zero_frame(path),
        "audio_only": lambda: media.make_audio_only(path.with_suffix(".m4a")),
        "missing": lambda: path,
        "folder": lambda: path.mkdir() or path,
    }
    bad = makers[make]()
    with pytest.raises(InputError) as err:
        P.probe(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(InputError):
        V.read_frames(bad)
    if make in ("truncated", "index_cut", "garbage"):
        assert isinstance(err.value, VideoDecodeError) and err.value.detail  # ffmpeg's words included


def test_decode_failure_mid_stream_raises_with_ffmpeg_words(tmp_path):
    src = media.make_clip(tmp_path / "src.mp4", frames=60, audio=False)
    bad = media.make_damaged_tail(src, tmp_path / "bad.mp4")
    assert P.probe(bad).frame_count == 60  # the index is intact
    got = []
    with pytest.raises(VideoDecodeError) as err:
        with V.read_frames(bad) as frames:
            for frame in frames:
                got.append(frame)
    assert str(bad) in str(err.value) and "Invalid" in err.value.detail
    assert 0 < len(got) < 60


def test_dump_parser_reads_old_rotate_tag_and_display_matrix():
    old = textwrap.dedent("""\
        Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'phone.mp4':
          Duration: 00:00:05.02, start: 0.000000, bitrate: 17000 kb/s
            Stream #0:0(eng): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709), 1920x1080, 16000 kb/s, 29.97 fps, 29.97 tbr, 90k tbn, 180k tbc (default)
            Metadata:
              rotate          : 90
              creation_time   : 2019-05-01T10:00:00.000000Z
            Side data:
              displaymatrix: rotation of -90.00 degrees
            Stream #0:1(eng): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp, 256 kb/s (default)
        """)
    meta = P._meta_from_dump(old)
    assert (meta.codec, meta.pix_fmt, meta.coded_width, meta.coded_height) == ("h264", "yuv420p", 1920, 1080)
    assert meta.rotation == 90 and meta.has_audio
    tag_only = old.replace("displaymatrix: rotation of -90.00 degrees", "").replace(": 90", ": 270")
    assert P._meta_from_dump(tag_only).rotation == 270


def test_ffprobe_json_parser_matches_dump_parser():
    data = {"streams": [
        {"codec_type": "video", "codec_name": "mjpeg", "width": 300, "height": 300, "pix_fmt": "yuvj420p",
         "disposition": {"attached_pic": 1}},
        {"codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080, "pix_fmt": "yuv420p",
         "tags": {"rotate": "90"}, "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]},
        {"codec_type": "audio", "codec_name": "aac"},
    ]}
    meta = P._meta_from_ffprobe(data)
    assert (meta.codec, meta.coded_width, meta.coded_height, meta.rotation, meta.has_audio) == (
        "h264", 1920, 1080, 90, True)
    assert P._meta_from_ffprobe({"streams": [{"codec_type": "audio"}]}) is None


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_clip_comes_out_upright(tmp_path, rotation):
    plain = read_all(media.make_marker_clip(tmp_path / "plain.mp4"))
    rotated = media.make_marker_clip(tmp_path / f"rot{rotation}.mp4", rotation=rotation)
    info = P.probe(rotated)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((48, 64) if rotation % 180 else (64, 48))
    frames = read_all(rotated)
    assert frames.shape[1:] == (info.height, info.width, 3)
    # Independent truth: numpy turning the unrotated decode clockwise by the same angle.
    expected = np.rot90(plain, k=-rotation // 90, axes=(1, 2))
    assert np.abs(frames.astype(int) - expected).mean() < 2.0
    ys, xs = np.nonzero(frames[0, ..., 0] > 128)
    box = {90: (0, 15, 40, 47), 180: (40, 47, 48, 63), 270: (48, 63, 0, 7)}[rotation]
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == box


def test_vfr_clip_yields_every_frame_with_its_time(tmp_path):
    info = P.probe(media.make_vfr_clip(tmp_path / "vfr.mp4"))
    assert info.vfr and info.frame_count == 45 and info.fps == 30  # the display rate: the fast stretch's
    want = np.array([i / 30 for i in range(30)] + [1 + i / 15 for i in range(15)])
    tick = 1 / 15360 + 1e-9  # the clip's mp4 time base (ffmpeg's default for 30 fps), plus rounding
    assert np.abs(info.frame_times - want).max() <= 1 / 30  # setpts rounds to the 1/30 input clock
    assert info.duration == pytest.approx(2.0, abs=tick + 1 / 30)
    with V.read_frames(tmp_path / "vfr.mp4") as frames:
        got = list(frames)
        assert frames.fps == 30 and np.array_equal(frames.times, info.frame_times)
    assert len(got) == 45  # every frame once: none dropped or repeated by resampling


def test_start_duration_max_frames_size_and_fps(clip):
    frames = read_all(clip, start=0.5, max_frames=7, size=32)
    assert frames.shape == (7, 32, 32, 3)
    full = read_all(clip)
    part = read_all(clip, start=0.5, duration=0.5)
    assert abs(len(part) - 15) <= 1
    first = int(round(0.5 * NTSC))  # frame shown at t = 0.5 s
    assert np.abs(part[0].astype(int) - full[first]).mean() < 1.0
    assert abs(len(read_all(clip, fps=15)) - 23) <= 1


def test_frames_equal_the_official_png_extraction(tmp_path, clip):
    """The official pipeline extracted frames with `ffmpeg -i video %d.png` and resized with
    cv2.resize(INTER_LINEAR): we must produce the very same pixels."""
    media.run_ffmpeg("-i", clip, tmp_path / "%03d.png")
    ref = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted(tmp_path.glob("*.png"))])
    got = read_all(clip)
    assert got.shape == ref.shape == (45, 48, 64, 3) and np.array_equal(got, ref)
    small = read_all(clip, size=(32, 20), max_frames=3)
    assert np.array_equal(small[2], cv2.resize(ref[2], (32, 20), interpolation=cv2.INTER_LINEAR))


def test_early_break_reaps_ffmpeg(clip):
    with V.read_frames(clip) as frames:
        for i, _ in enumerate(frames):
            if i == 2:
                break
        child = frames._child
    assert child.proc.poll() is not None and child.proc.stdout.closed


def test_image_folder_and_single_image_sources(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {n: rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for n in (1, 2, 10)}
    for n, img in imgs.items():
        write_image(tmp_path / f"frame{n}.png", img)
    with V.read_frames(tmp_path, fps=12) as frames:
        got = list(frames)
        assert frames.fps == 12 and frames.info.frame_count == 3
    assert all(np.array_equal(g, imgs[n]) for g, n in zip(got, (1, 2, 10)))  # natural order
    single = read_all(tmp_path / "frame10.png", size=(8, 6))
    assert single.shape == (1, 6, 8, 3)


# ----------------------------------------------------------------------------- writing


def test_round_trip_keeps_count_rate_audio_and_pixels(tmp_path, clip):
    src = read_all(clip)
    out = tmp_path / "out.mp4"
    with V.read_frames(clip) as frames, E.VideoWriter(out, P.probe(clip).fps, audio_from=clip) as writer:
        for frame in frames:
            writer.write(frame)
    info = P.probe(out)
    assert info.fps == NTSC and info.frame_count == 45
    assert info.has_audio and info.audio_duration == pytest.approx(info.duration, abs=0.05)
    back = read_all(out)
    assert np.abs(back.astype(int) - src).mean() < 4.0  # chroma subsampling of a busy 64x48 pattern
    assert no_leftovers(tmp_path)


def test_writer_keeps_every_frame_in_order_and_colour(tmp_path):
    i = np.arange(40)
    colours = np.stack([i * 37 % 256, i * 11 % 256, 255 - i * 5], axis=1).astype(np.uint8)  # 40 x 3
    frames = np.broadcast_to(colours[:, None, None, :], (40, 32, 32, 3))
    with E.VideoWriter(tmp_path / "flat.mp4", NTSC) as writer:
        writer.write(frames[:15])
        for frame in frames[15:]:
            writer.write(frame)
    back = read_all(tmp_path / "flat.mp4")
    assert back.shape == (40, 32, 32, 3)
    # No drop, dup or shift; BT.709 both ways. ffmpeg's default yuv->rgb path (kept on purpose: the
    # official frames were extracted with it) is about 1 level dark, up to 3 levels at crf 18.
    assert np.abs(back.mean(axis=(1, 2)) - colours).max() < 4.0


def test_audio_segment_is_cut_and_padded_to_the_video(tmp_path, clip):
    with E.VideoWriter(tmp_path / "seg.mp4", 30, audio_from=clip, audio_start=0.5, audio_duration=0.4) as writer:
        writer.write(np.zeros((30, 48, 64, 3), np.uint8))  # 1 s of video, 0.4 s of source audio
    info = P.probe(tmp_path / "seg.mp4")
    assert info.frame_count == 30 and info.audio_duration == pytest.approx(1.0, abs=0.05)


def test_no_audio_input_gives_silent_output(tmp_path):
    silent = media.make_clip(tmp_path / "silent.mp4", frames=10, audio=False)
    with E.VideoWriter(tmp_path / "out.mp4", 25, audio_from=silent) as writer:
        for frame in V.read_frames(silent):
            writer.write(frame)
    info = P.probe(tmp_path / "out.mp4")
    assert not info.has_audio and info.frame_count == 10 and info.fps == 25


def test_odd_size_pads_by_repeating_edges(tmp_path):
    odd = media.make_clip(tmp_path / "odd.mp4", size=(65, 49), frames=5, audio=False, pix_fmt="yuv444p")
    src = read_all(odd)
    assert src.shape == (5, 49, 65, 3)
    with E.VideoWriter(tmp_path / "out.mp4", 30) as writer:
        writer.write(src)
    back = read_all(tmp_path / "out.mp4")
    assert back.shape == (5, 50, 66, 3)
    luma = lambda a: a.astype(float) @ [0.2126, 0.7152, 0.0722]  # 4:4:4 -> 4:2:0 loses chroma, not luma
    src_y, back_y = luma(src), luma(back)
    assert np.abs(back_y[:, :49, :65] - src_y).mean() < 3.0  # padding added at the bottom/right only
    assert np.abs(back_y[:, 49, :65] - src_y[:, 48]).mean() < 3.0  # repeated last row
    assert np.abs(back_y[:, :49, 65] - src_y[:, :, 64]).mean() < 3.0  # repeated last column


def test_exception_mid_write_leaves_nothing(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyError):
        with E.VideoWriter(out, 30) as writer:
            writer.write(np.zeros((3, 16, 16, 3), np.uint8))
            raise KeyError("boom")
    assert not out.exists() and no_leftovers(tmp_path)


def test_zero_frames_creates_nothing(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(OutputError):
        with E.VideoWriter(out, 30):
            pass
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_untouched_on_failure(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with E.VideoWriter(out, 30) as writer:
            writer.write(np.zeros((2, 16, 16, 3), np.uint8))
            raise RuntimeError
    assert out.read_bytes() == b"previous result" and no_leftovers(tmp_path)


_SIGINT_CHILD = """
import sys, time, numpy as np
from impersonator_cli.io.encode import VideoWriter
with VideoWriter(sys.argv[1], 30) as w:
    for i in range(100000):
        w.write(np.full((48, 64, 3), i % 256, np.uint8))
        if i == 10:
            print(w._child.proc.pid, flush=True)
        time.sleep(0.005)
"""


def test_sigint_while_writing_leaves_nothing(tmp_path):
    out = tmp_path / "out.mp4"
    child = subprocess.Popen([sys.executable, "-c", _SIGINT_CHILD, str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    ffmpeg_pid = int(child.stdout.readline())
    assert any(".partial-" in p.name for p in tmp_path.iterdir())  # it was writing
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    assert not out.exists() and no_leftovers(tmp_path)
    with pytest.raises(ProcessLookupError):
        os.kill(ffmpeg_pid, 0)  # ffmpeg was killed and reaped


def test_bad_encoder_raises_encode_error(tmp_path):
    with pytest.raises(EnvironmentProblem) as err:
        with E.VideoWriter(tmp_path / "out.mp4", 30, codec="no_such_encoder") as writer:
            for _ in range(50):
                writer.write(np.zeros((16, 16, 3), np.uint8))
    assert err.value.detail and "no_such_encoder" in err.value.detail
    assert not (tmp_path / "out.mp4").exists() and no_leftovers(tmp_path)


def test_chatty_ffmpeg_does_not_block(tmp_path, clip, monkeypatch):
    """At -loglevel trace ffmpeg writes far more than a pipe buffer (64 KB) to stderr."""
    monkeypatch.setattr(V, "LOGLEVEL", "trace")
    result = {}

    def work():
        frames = read_all(clip)
        with E.VideoWriter(tmp_path / "out.mp4", 30) as writer:
            writer.write(np.repeat(frames, 6, axis=0))
        with V.read_frames(tmp_path / "out.mp4") as src:
            result["n"] = sum(1 for _ in src)
            result["stderr"] = src._child.stderr_bytes

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "ffmpeg blocked on its stderr pipe"
    assert result["n"] == 270 and result["stderr"] > 2 * 65536


# ----------------------------------------------------------------------------- binaries


def test_ffmpeg_resolution_and_info(monkeypatch, tmp_path):
    info = P.ffmpeg_info()
    assert info.libx264 and info.aac and "ffmpeg version" in info.version
    monkeypatch.setenv("IMPERSONATE_FFMPEG", str(tmp_path / "nope"))
    with pytest.raises(EnvironmentProblem) as err:
        P.find_ffmpeg()
    assert "imageio-ffmpeg" in str(err.value)
    monkeypatch.setenv("IMPERSONATE_FFMPEG", info.path)
    assert P.find_ffmpeg() == info.path
