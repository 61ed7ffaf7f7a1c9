"""The fast CPU kernels inside the real imitation pipeline (API, motion file, ffmpeg encode and
decode): they give the frames the reference kernels give, and jobs keep their prepared filters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from impersonator_cli.api import ImitateOptions, Impersonator, PersonalizeOptions, SourceOptions
from impersonator_cli.weights.checkpoints import save_safetensors
from impersonator_cli.gan.blocks import Conv2d, init_weights
from impersonator_cli.gan.generator import LiquidWarpingGenerator
from impersonator_cli.io.video import read_frames
from support.e2e_world import FRAMES
from support.fp import network_tolerance

SIZE = 256


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_world):
    """(Impersonator with a 256-wide-bottleneck generator, prepared source, the shared demo world's
    files, a folder of this module's own for outputs)."""
    folder = tmp_path_factory.mktemp("fast")
    files = demo_world.files
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
    assert fast.shape == ref.shape and len(fast) == FRAMES
    diff = np.abs(fast - ref)
    # The two kernel sets differ by float32 rounding: |d| <= tol in [-1, 1] (support/fp.py's network
    # model at 256 x 256), i.e. tol * 127.5 grey levels, so an 8-bit value moves by at most
    # `levels`, and only where a rounding boundary lies between the two results: a fraction
    # <= tol * 127.5 of the values. yuv420p turns L levels of RGB into <= L levels of Y and of the
    # 2 x 2 block's U and V; decoding back gives <= L (1.164 + 2.018) + 1 levels, on up to 12 values
    # (2 x 2 pixels, 3 channels) per changed one.
    x = torch.rand(1, 6, SIZE, SIZE) * 2 - 1
    identity = torch.stack(torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE),
                                          indexing="xy"), -1)[None]
    tol = network_tolerance(gen, lambda: gen.transfer(gen.encode_source(x), x, identity))
    levels = math.floor(tol * 127.5) + 1
    assert diff.max() <= math.ceil(levels * (1.164 + 2.018) + 1)
    assert (diff > 0).mean() <= 12 * tol * 127.5
    assert np.abs(fast[1:] - fast[:-1]).mean() > 1  # the frames themselves do change


@pytest.mark.slow  # one tuning step of a 256-wide generator at 256 x 256, forwards and backwards
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
    assert steps == [(1, 1)] and frames[-1] == (FRAMES, FRAMES)  # each phase reports to its own callback



def test_reference_kernels_can_be_chosen_by_environment(world, monkeypatch):
    from impersonator_cli.gan.load import load_generator

    _, _, _, folder = world
    assert load_generator(folder / "gen.safetensors").fast_cpu
    monkeypatch.setenv("IMPERSONATE_CPU_KERNELS", "reference")
    assert not load_generator(folder / "gen.safetensors").fast_cpu
