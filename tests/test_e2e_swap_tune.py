"""`impersonate swap --personalize` end to end through the CLI's entry point (in-process) on the
shared mannequin world."""

from __future__ import annotations

import json

import numpy as np
import pytest

from impersonator_cli.io.images import read_image

pytestmark = pytest.mark.slow  # personalization runs the generator forwards and backwards


@pytest.fixture
def world(demo_world):
    return demo_world


def test_swap_personalize_tunes_on_the_pair_and_reports_it(world, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IMPERSONATE_CACHE_DIR", str(tmp_path / "cache"))
    f = world.files
    common = ["swap", "-s", f.source, "--source-smpl", f.source_smpl, "-r", f.reference, "--reference-smpl",
              f.reference_smpl, "--weights-dir", f.weights_dir, "--crop", "full", "--generator",
              world.small_generator, "--device", "cpu", "-q", "--json"]
    plain, tuned = tmp_path / "plain.png", tmp_path / "tuned.png"
    assert cli(*common, "-o", plain).returncode == 0
    res = cli(*common, "-o", tuned, "--personalize", "--personalize-steps", 2)
    assert res.returncode == 0, res.stderr
    warnings = json.loads(res.stdout)["warnings"]
    assert any("personalization: 2 steps" in w for w in warnings), warnings
    assert len(list((tmp_path / "cache" / "personalized").glob("*.safetensors"))) == 1
    diff = np.abs(read_image(tuned).astype(int) - read_image(plain)).mean()
    assert diff > 0.5  # the tuned generator made another image


def test_swap_personalize_with_a_source_video_tunes_once_and_renders_every_frame(world, cli, tmp_path,
                                                                                 monkeypatch):
    from impersonator_cli.io.probe import probe
    from impersonator_cli.io.video import read_frames

    monkeypatch.setenv("IMPERSONATE_CACHE_DIR", str(tmp_path / "cache"))
    f = world.files
    common = ["swap", "-s", f.driver, "-r", f.reference, "--reference-smpl", f.reference_smpl, "--part", "upper",
              "--weights-dir", f.weights_dir, "--crop", "full", "--generator", world.small_generator,
              "--device", "cpu", "-q", "--json"]
    plain, tuned = tmp_path / "plain.mp4", tmp_path / "tuned.mp4"
    assert cli(*common, "-o", plain).returncode == 0
    res = cli(*common, "-o", tuned, "--personalize", "--personalize-steps", 2)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert any("personalization: 2 steps" in w for w in summary["warnings"]), summary
    assert len(list((tmp_path / "cache" / "personalized").glob("*.safetensors"))) == 1  # one pair, tuned once
    info, src = probe(tuned), probe(f.driver)
    assert info.frame_count == src.frame_count == summary["frames"] and info.fps == src.fps and info.has_audio

    def frames(path):
        with read_frames(path) as video:
            return np.stack(list(video)).astype(int)
    diff = np.abs(frames(tuned) - frames(plain)).mean(axis=(1, 2, 3))
    assert (diff > 0.5).all(), diff  # every frame came from the tuned generator
