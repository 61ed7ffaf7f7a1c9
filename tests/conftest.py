"""Shared fixtures: everything a test needs is generated here; nothing is downloaded.

The demo world (the mannequin's assets, photos, motion files, driver video, a sane HMR and a small
generator) is built once per session by `demo_world`; tests read it and write only under their own
tmp_path. Every test also runs under `_global_state_guard`, which fails a test that leaves process-wide
state changed (environment, working directory, torch flags and thread count, signal handlers).
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
import torch

# OpenCV sets environment variables (Qt paths) when first imported: import it before any test runs,
# so that the state guard below sees those as the baseline rather than as a test's leak.
import cv2  # noqa: E402,F401

# Keep the suite predictable on small CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# The same arithmetic on every CPU: `--precision auto` picks bf16 on CPUs with native bf16, which would
# make results depend on the machine. Tests of that rule call it with explicit inputs, or unset this.
os.environ.setdefault("IMPERSONATE_PRECISION", "fp32")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (and the set of folders)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    """The mannequin world of tests/support/e2e_world.py, built once. Read-only for tests: the
    session fails at teardown if any file in it was added, removed or changed."""
    from support.e2e_world import build_world

    world = build_world(tmp_path_factory.mktemp("demo-world"))
    before = _snapshot(world.folder)
    yield world
    after = _snapshot(world.folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests modified the shared demo world: {changed}"


@pytest.fixture(scope="session")
def mannequin_kit(demo_world):
    """(smpl, maps, corner_uv F x 3 x 2, texture 3 x 256 x 256 in [0, 1]) of the mannequin, loaded
    through the same loaders as the official assets (the demo world's asset folder)."""
    from impersonator_cli.demo.mannequin import mannequin_arrays
    from impersonator_cli.demo.mannequin_assets import mannequin_texture, mannequin_uv
    from impersonator_cli.body.smpl import SMPL
    from impersonator_cli.render.maps import MeshMaps, load_mesh_assets
    from impersonator_cli.render.texture import face_corner_uv

    maps = MeshMaps.from_assets(load_mesh_assets(demo_world.files.weights_dir))
    smpl = SMPL(mannequin_arrays())
    vt, face_vt = mannequin_uv()
    corner_uv = face_corner_uv(torch.from_numpy(vt).float(), torch.from_numpy(face_vt))
    texture = torch.from_numpy(mannequin_texture(256)).permute(2, 0, 1).float() / 255
    return smpl, maps, corner_uv, texture


# Set by pytest itself, or by a library when it is first imported (torch's optimisers import inductor).
_NOT_TEST_STATE = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR"}


def _global_state() -> dict:
    def subnormals_kept() -> bool:
        return float(torch.tensor([1e-39]) * torch.tensor([1.0])) != 0.0

    return {
        "cwd": os.getcwd(),
        "environ": {k: v for k, v in os.environ.items() if k not in _NOT_TEST_STATE},
        "torch threads": torch.get_num_threads(),
        "torch default dtype": torch.get_default_dtype(),
        "torch grad enabled": torch.is_grad_enabled(),
        "torch deterministic": torch.are_deterministic_algorithms_enabled(),
        "subnormals kept": subnormals_kept(),
        "SIGINT handler": signal.getsignal(signal.SIGINT),
        "SIGTERM handler": signal.getsignal(signal.SIGTERM),
    }


@pytest.fixture(autouse=True)
def _global_state_guard():
    """Fail (and repair) a test that leaves process-wide state changed, so it cannot leak into the
    next test: in-process CLI runs share this interpreter. Use monkeypatch for env and cwd."""
    before = _global_state()
    yield
    after = _global_state()
    leaked = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if leaked:
        os.chdir(before["cwd"])
        for key in set(os.environ) - set(before["environ"]) - _NOT_TEST_STATE:
            del os.environ[key]
        os.environ.update(before["environ"])
        torch.set_num_threads(before["torch threads"])
        torch.set_default_dtype(before["torch default dtype"])
        torch.set_grad_enabled(before["torch grad enabled"])
        torch.use_deterministic_algorithms(before["torch deterministic"])
        torch.set_flush_denormal(not before["subnormals kept"])
        signal.signal(signal.SIGINT, before["SIGINT handler"])
        signal.signal(signal.SIGTERM, before["SIGTERM handler"])
        if "environ" in leaked:
            b, a = leaked["environ"]
            leaked["environ"] = {k: (b.get(k), a.get(k)) for k in b.keys() | a.keys() if b.get(k) != a.get(k)}
        pytest.fail(f"the test left process-wide state changed: {leaked}", pytrace=False)


@pytest.fixture
def cli(capsys):
    """cli(*args) -> returncode, stdout, stderr of `impersonate *args`, run in this process."""
    from support.cli import run_cli

    return lambda *args: run_cli(capsys, *args)
