"""`impersonate swap --personalize` end to end through the real CLI on the mannequin world."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from e2e_world import build_world
from impersonator_cli.images import read_image


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world-swap-tune"))


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "impersonator_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_swap_personalize_tunes_on_the_pair_and_reports_it(world, tmp_path, monkeypatch):
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


def test_swap_personalize_with_a_source_video_tunes_once_and_renders_every_frame(world, tmp_path, monkeypatch):
    from impersonator_cli.video import probe, read_frames

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
