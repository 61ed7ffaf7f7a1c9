"""Variable-frame-rate drivers: every frame used once, each shown at its own time (io/timing.py).

The clip is a phone that slowed its capture (support/media.make_phone_vfr): 25 frames 1/25 s apart,
a 1.52 s gap, then 5 frames 0.1 s apart. Each frame is a flat grey whose level tells its index, so a
decoded frame, or the driver panel of a side-by-side output, names the driver frame it shows.
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from support import media
from impersonator_cli.body.motion import MotionData, load_motion, save_motion
from impersonator_cli.errors import InputError
from impersonator_cli.io import timing
from impersonator_cli.io.probe import probe
from impersonator_cli.io.video import read_frames

TIMES = np.array(media.PHONE_TIMES)
TICK = 0.001 + 1e-9  # the clip's time base (ffmpeg truncates to it), plus float64 rounding
RGB_STEP = 6 * 255 / 219  # one frame's luma step in full-range RGB
LEVELS = (np.array([media.phone_level(i) for i in range(30)]) - 16) * 255 / 219


def frame_index(rgb: np.ndarray) -> int:
    """Which phone frame a flat grey image shows (nearest level)."""
    return int(np.abs(LEVELS - float(rgb.mean())).argmin())


@pytest.fixture(scope="module", params=[0, 3], ids=["no-bframes", "bframes"])
def phone(request, tmp_path_factory):
    return media.make_phone_vfr(tmp_path_factory.mktemp("vfr") / "phone.mp4", bframes=request.param)


def test_probe_counts_every_frame_and_keeps_its_time(phone):
    info = probe(phone)
    assert info.vfr and info.frame_count == 30
    assert np.abs(info.frame_times - TIMES).max() <= TICK
    assert info.fps == 25  # the fast stretch's rate: no frame has to share an output slot
    # The span ends one typical step after the last frame, not at a B-frame packet's decode-order end.
    assert TIMES[-1] < info.duration <= TIMES[-1] + 0.1 + TICK


def test_reader_yields_every_frame_once_in_order_with_its_time(phone):
    with read_frames(phone) as frames:
        got = [frame_index(f) for f in frames]
        assert len(frames) == 30
    assert got == list(range(30))
    assert np.abs(frames.times - TIMES).max() <= TICK and frames.fps == 25


@pytest.mark.parametrize("start,duration,max_frames", [(0.5, None, None), (0.5, 2.1, None), (0, None, 27),
                                                       (1.0, None, None)])
def test_reader_selects_by_timestamps(phone, start, duration, max_frames):
    want = [i for i, t in enumerate(TIMES) if t >= start and (duration is None or t < start + duration)]
    want = want[:max_frames]
    with read_frames(phone, start=start, duration=duration, max_frames=max_frames) as frames:
        got = [frame_index(f) for f in frames]
        assert frames.expected_frames == len(want)
    assert got == want


def _shown(holds: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(holds)), holds)


def test_holds_show_each_frame_once_at_its_time():
    holds = timing.hold_counts(TIMES, Fraction(25))
    assert (holds >= 1).all()
    shown = _shown(holds)
    end = TIMES[-1] + timing.last_step(TIMES, 0.04)
    assert abs(len(shown) - end * 25) <= 0.5 + 1e-9  # the output lasts as long as the driver
    # Output frame k (at k/25 s) shows the driver frame whose own interval holds that time, to within
    # half an output frame of rounding.
    starts = np.append(TIMES, end)
    for k, i in enumerate(shown):
        assert starts[i] - 0.02 - 1e-9 <= k / 25 < starts[i + 1] + 0.02


def test_holds_never_drop_crowded_frames():
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.001, 0.2, size=200))
    for rate in (Fraction(24), Fraction(30000, 1001), Fraction(120)):
        holds = timing.hold_counts(times, rate)
        assert (holds >= 1).all() and len(holds) == len(times)
        first_slot = np.concatenate([[0], np.cumsum(holds)[:-1]])
        # A frame is never shown before its time (rounded), and a crowded stretch is caught up later:
        # the lateness never exceeds the number of frames that arrived within the same output step.
        assert (first_slot >= np.floor((times - times[0]) * float(rate) + 0.5)).all()


def test_constant_rate_holds_are_ones():
    times = np.arange(100) * Fraction(1001, 30000)
    holds = timing.hold_counts(np.array([float(t) for t in times]), Fraction(30000, 1001))
    assert (holds == 1).all()
    assert not timing.is_variable(np.round(np.arange(100) / 29.97, 3), tick=TICK)  # 1 ms jitter of a CFR
    assert timing.is_variable(TIMES, tick=TICK)


def _motion(times=None, frames=30) -> MotionData:
    z = np.zeros
    return MotionData(cams=np.tile([0.9, 0, 0], (frames, 1)), poses=z((frames, 72)), shapes=z((frames, 10)),
                      boxes=np.tile([32, 24, 48], (frames, 1)), fps=Fraction(25), frame_size=(64, 48),
                      content_hash="0" * 64, times=times)


def test_motion_file_keeps_frame_times(tmp_path):
    path = save_motion(tmp_path / "m.motion.npz", _motion(TIMES))
    back = load_motion(path)
    assert np.array_equal(back.times, TIMES) and back.fps == 25
    assert load_motion(save_motion(tmp_path / "c.motion.npz", _motion())).times is None  # CFR: no times


def test_motion_file_with_bad_times_is_refused(tmp_path):
    path = save_motion(tmp_path / "m.motion.npz", _motion(TIMES))
    with np.load(path) as data:
        arrays = dict(data)
    arrays["times"] = TIMES[::-1].copy()
    np.savez(tmp_path / "bad.motion.npz", **arrays)
    with pytest.raises(InputError, match="times"):
        load_motion(tmp_path / "bad.motion.npz")


# ----------------------------------------------------------------------------- through the CLI


def _imitate(world, out, driver, *extra):
    f = world.files
    return ["imitate", "-s", f.source, "--source-smpl", f.source_smpl, "-d", driver, "-o", out,
            "--weights-dir", f.weights_dir, "--crop", "full", "--device", "cpu", "-q", "--generator", "none",
            "--json", *extra]


def test_vfr_motion_file_drives_a_timed_output(demo_world, cli, tmp_path):
    base = load_motion(demo_world.files.motion)
    times = TIMES[:base.frame_count].copy()
    times[-3:] += 1.0  # a gap, as in a slowed capture
    motion = MotionData(cams=base.cams, poses=base.poses, shapes=base.shapes, boxes=base.boxes, fps=Fraction(25),
                        frame_size=base.frame_size, content_hash=base.content_hash, times=times)
    driver = save_motion(tmp_path / "vfr.motion.npz", motion)
    out = tmp_path / "out.mp4"
    res = cli(*_imitate(demo_world, out, driver))
    assert res.returncode == 0, res.stderr
    holds = timing.hold_counts(times, Fraction(25))
    info = probe(out)
    assert info.frame_count == holds.sum() > base.frame_count and info.fps == 25 and not info.vfr
    summary = json.loads(res.stdout)
    assert summary["frames"] == holds.sum() and any("variable frame rate" in w for w in summary["warnings"])


@pytest.mark.slow  # HMR on 30 frames, twice
def test_vfr_driver_keeps_every_frame_at_its_time_with_audio(demo_world, cli, tmp_path):
    phone = media.make_phone_vfr(tmp_path / "phone.mp4", bframes=3)
    out = tmp_path / "out.mp4"
    res = cli(*_imitate(demo_world, out, phone, "--layout", "side-by-side"))
    assert res.returncode == 0, res.stderr
    info = probe(out)
    with read_frames(out) as frames:
        shown = [frame_index(f[96:160, 96:160]) for f in frames]  # the driver panel's centre
    assert sorted(set(shown)) == list(range(30)) and shown == sorted(shown)  # every frame, in order
    starts = np.append(probe(phone).frame_times, info.duration)
    for k, i in enumerate(shown):  # each shown within one output frame of its own time
        assert starts[i] - 0.04 - 1e-6 <= k / 25 < starts[i + 1] + 0.04
    assert info.fps == 25 and abs(info.duration - probe(phone).duration) <= 0.04 + 1e-6
    assert info.has_audio and abs(info.audio_duration - info.duration) <= 0.04 + 0.03  # + one AAC frame
    # The motion file keeps the timing: imitating from it gives the same frame count and duration.
    motion = tmp_path / "phone.motion.npz"
    assert cli("motion", "extract", phone, "-o", motion, "--weights-dir", demo_world.files.weights_dir,
               "--device", "cpu", "-q").returncode == 0
    assert np.abs(load_motion(motion).times - TIMES).max() <= TICK
    again = tmp_path / "again.mp4"
    assert cli(*_imitate(demo_world, again, motion)).returncode == 0
    assert probe(again).frame_count == info.frame_count


@pytest.mark.slow  # HMR and a source preparation on each of 8 frames
def test_swap_on_a_vfr_video_keeps_its_timing(demo_world, cli, tmp_path):
    f = demo_world.files
    phone = media.make_phone_vfr(tmp_path / "phone.mp4", fast=4, slow=4)
    out = tmp_path / "swapped.mp4"
    res = cli("swap", "-s", phone, "-r", f.reference, "--reference-smpl", f.reference_smpl, "-o", out,
              "--weights-dir", f.weights_dir, "--crop", "full", "--generator", "none", "--device", "cpu", "-q")
    assert res.returncode == 0, res.stderr
    info, driver = probe(out), probe(phone)
    assert info.frame_count == timing.hold_counts(driver.frame_times, driver.fps).sum() and info.fps == 25
    assert abs(info.duration - driver.duration) <= 0.04 + 1e-6 and info.has_audio
