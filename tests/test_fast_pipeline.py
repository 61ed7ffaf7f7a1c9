"""The fast CPU kernels inside the real imitation pipeline (API, motion file, ffmpeg encode and
decode): they give the frames the reference kernels give, and jobs keep their prepared filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impersonator_cli.api import ImitateOptions, Impersonator, PersonalizeOptions, SourceOptions
from impersonator_cli.weights.checkpoints import save_safetensors
from impersonator_cli.demo.world import build_demo
from impersonator_cli.gan.blocks import Conv2d, init_weights
from impersonator_cli.gan.generator import LiquidWarpingGenerator
from impersonator_cli.io.video import read_frames

SIZE = 256


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fast")
    files = build_demo(folder, size=SIZE, frames=6)
    torch.manual_seed(3)
    net = init_weights(LiquidWarpingGenerator(conv_dim=32, repeat_num=2))  # 256-wide bottleneck
    path = save_safetensors(net.state_dict(), folder / "gen.safetensors",
                            {"arch": "ImpersonatorGenerator", "conv_dim": 32, "repeat_num": 2})
    imp = Impersonator(weights_dir=files.weights_dir, device="cpu", generator=str(path), size=SIZE)
    src = imp.prepare(files.source, smpl=files.source_smpl, options=SourceOptions(crop="full"))
    return imp, src, files, folder


def _frames(path) -> np.ndarray:
    with read_frames(path) as frames:
        return np.stack(list(frames)).astype(np.int16)


def test_fast_kernels_give_the_reference_frames_and_jobs_keep_their_filters(world):
    imp, src, files, folder = world
    gen = imp.synth.generator
    lossless = ImitateOptions(crf=0)
    gen.fast_cpu = True
    imp.imitate([src], files.motion, folder / "fast.mp4", options=lossless, overwrite=True)
    winograd = [m for m in gen.tsf_model.modules() if isinstance(m, Conv2d) and m._winograd is not None]
    assert len(winograd) == 4  # the two res-blocks' convolutions ran through Winograd
    # the source stream runs once per job: it keeps no transformed filters
    assert not [m for m in gen.src_model.modules() if isinstance(m, Conv2d) and m._winograd is not None]
    prepared = [m._winograd for m in winograd]
    imp.imitate([src], files.motion, folder / "fast2.mp4", options=lossless, overwrite=True)
    assert all(m._winograd is p for m, p in zip(winograd, prepared))  # no weight reload between jobs

    gen.fast_cpu = False
    try:
        imp.imitate([src], files.motion, folder / "ref.mp4", options=lossless, overwrite=True)
    finally:
        gen.fast_cpu = True
    fast, ref = _frames(folder / "fast.mp4"), _frames(folder / "ref.mp4")
    assert fast.shape == ref.shape and len(fast) == 6
    diff = np.abs(fast - ref)
    # float32 rounding only: a handful of values one level apart before yuv420p (measured: 84 of
    # 1.2 M differ, by 3 at most after chroma subsampling and decoding)
    assert diff.max() <= 4 and (diff > 0).mean() < 1e-3
    assert np.abs(fast[1:] - fast[:-1]).mean() > 1  # the frames themselves do change


def test_personalized_job_restores_the_generator(world):
    imp, src, files, folder = world
    gen = imp.synth.generator
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    steps, frames = [], []
    imp.imitate([src], files.motion, folder / "tuned.mp4", overwrite=True,
                personalize=PersonalizeOptions(steps=1, cache=False, use_face=False),
                tune_progress=lambda *a: steps.append(a), progress=lambda *a: frames.append(a))
    after = gen.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert steps == [(1, 1)] and frames[-1] == (6, 6)  # each phase reports to its own callback



def test_reference_kernels_can_be_chosen_by_environment(world, monkeypatch):
    from impersonator_cli.gan.load import load_generator

    _, _, _, folder = world
    assert load_generator(folder / "gen.safetensors").fast_cpu
    monkeypatch.setenv("IMPERSONATE_CPU_KERNELS", "reference")
    assert not load_generator(folder / "gen.safetensors").fast_cpu
