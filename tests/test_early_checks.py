"""Options are checked before any weight is loaded or any input file is read, and a frame folder
drives a job with its default sound settings.

The inputs here are garbage files and the weights folder is empty: an option error must come out as
a usage error (exit 2) naming the option, not as the input error (3) or weights error (4) that
reading them would give."""

from __future__ import annotations

import json

import numpy as np
import pytest

from impersonator_cli.errors import UsageError
from impersonator_cli.io.images import write_image
from impersonator_cli.io.probe import probe
from impersonator_cli.io.video import read_frames
from impersonator_cli.jobs.imitate import ImitateOptions
from impersonator_cli.jobs.novelview import NovelViewOptions
from impersonator_cli.pipeline.source import SourceOptions
from impersonator_cli.tune.jobs import PersonalizeOptions


@pytest.fixture
def junk(tmp_path):
    """A source photo and a driver that fail if read, and an empty weights folder."""
    (tmp_path / "me.png").write_bytes(b"not a png")
    (tmp_path / "dance.mp4").write_bytes(b"not a video")
    (tmp_path / "weights").mkdir()
    return tmp_path


IMITATE_CASES = [
    (["--max-frames", "0"], "--max-frames"),
    (["--layout", "diagonal"], "--layout"),
    (["--frame", "poster"], "--frame"),
    (["--camera", "drone"], "--camera"),
    (["--batch-size", "0"], "--batch-size"),
    (["--start", "-1"], "--start"),
    (["--duration", "0"], "--duration"),
    (["--smooth", "-2"], "--smooth"),
    (["--crf", "60"], "--crf"),
    (["--bg-ks", "0"], "--bg-ks"),
    (["--renderer", "raytracer"], "renderer"),
    (["--personalize", "--personalize-steps", "0"], "--personalize-steps"),
]


@pytest.mark.parametrize("extra,named", IMITATE_CASES, ids=[c[1] + ":" + c[0][-1] for c in IMITATE_CASES])
def test_imitate_option_errors_come_before_any_reading(cli, junk, extra, named):
    res = cli("imitate", "-s", junk / "me.png", "-d", junk / "dance.mp4", "-o", junk / "out.mp4",
              "--weights-dir", junk / "weights", *extra)
    assert res.returncode == 2, res.stderr
    assert named in res.stderr and "Usage error" in res.stderr
    assert sorted(p.name for p in junk.iterdir()) == ["dance.mp4", "me.png", "weights"]  # nothing written


@pytest.mark.parametrize("extra,named", [(["--frames", "-5"], "--frames"), (["--fps", "0"], "--fps"),
                                         (["--yaw", "10", "--yaw", "20", "--pitch", "1", "--pitch", "2",
                                           "--pitch", "3"], "--pitch")])
def test_novelview_option_errors_come_before_any_reading(cli, junk, extra, named):
    res = cli("novelview", "-s", junk / "me.png", "-o", junk / "orbit.mp4", "--weights-dir", junk / "weights",
              *extra)
    assert res.returncode == 2, res.stderr
    assert named in res.stderr
    assert not (junk / "orbit.mp4").exists()


def test_wrong_output_kind_is_a_usage_error_before_loading(cli, junk):
    res = cli("swap", "-s", junk / "me.png", "-r", junk / "me.png", "-o", junk / "out.mp4",
              "--weights-dir", junk / "weights")
    assert res.returncode == 2 and ".png" in res.stderr  # a photo swap writes an image


def test_side_by_side_with_a_motion_file_driver_is_refused_first(cli, junk):
    (junk / "dance.motion.npz").write_bytes(b"junk")
    res = cli("imitate", "-s", junk / "me.png", "-d", junk / "dance.motion.npz", "-o", junk / "out.mp4",
              "--weights-dir", junk / "weights", "--layout", "side-by-side")
    assert res.returncode == 2 and "motion file" in res.stderr


@pytest.mark.parametrize("make,name", [
    (lambda: ImitateOptions(max_frames=0), "max_frames"),
    (lambda: ImitateOptions(layout="grid"), "layout"),
    (lambda: NovelViewOptions(frames=-5), "frames"),
    (lambda: NovelViewOptions(yaw=(1.0, 2.0), pitch=(1.0, 2.0, 3.0)), "pitch"),
    (lambda: PersonalizeOptions(steps=0), "steps"),
    (lambda: SourceOptions(ft_ks=0), "ft_ks"),
])
def test_api_options_name_the_argument(make, name):
    with pytest.raises(UsageError, match=name) as info:
        make()
    assert info.value.exit_code == 2


def test_a_frame_folder_drives_with_the_default_audio_setting(demo_world, cli, tmp_path):
    f = demo_world.files
    folder = tmp_path / "frames"
    folder.mkdir()
    with read_frames(f.driver) as frames:
        count = 0
        for i, frame in enumerate(frames):
            write_image(folder / f"{i:03d}.png", frame)
            count += 1
    out = tmp_path / "out.mp4"
    res = cli("imitate", "-s", f.source, "--source-smpl", f.source_smpl, "-d", folder, "-o", out,
              "--weights-dir", f.weights_dir, "--crop", "full", "--device", "cpu", "--generator", "none",
              "-q", "--json", "--max-frames", 3)
    assert res.returncode == 0, res.stderr
    info = probe(out)
    assert info.frame_count == 3 and not info.has_audio
    warnings = json.loads(res.stdout)["warnings"]
    assert any("folder of frames" in w and "silent" in w for w in warnings), warnings
    assert count > 3 and np.isfinite(info.duration)
