"""CUDA: float32 is IEEE float32, fp16 stays close to it, the whole imitation matches the CPU's, NVENC
encodes. The tests marked gpu are skipped without a CUDA device (`.ci/gpu-check` runs them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impersonator_cli.devices import ieee_fp32_on_cuda, resolve_runtime
from impersonator_cli.gan.blocks import init_weights
from impersonator_cli.gan.generator import LiquidWarpingGenerator
from support.fp import gamma_prob, network_tolerance

SIZE = 256


def test_ieee_fp32_switch_turns_tf32_off_in_cudnn_and_matmul():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        ieee_fp32_on_cuda()  # settable without a GPU: the flags are process-wide
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
        assert conv != "tf32"  # the newer per-operator view agrees (torch >= 2.9)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _generator_and_inputs(seed: int = 0):
    torch.manual_seed(seed)
    gen = init_weights(LiquidWarpingGenerator(conv_dim=32, repeat_num=2, bg_stream=False)).eval()
    src_in = torch.rand(1, 6, SIZE, SIZE) * 2 - 1
    tsf_in = torch.rand(2, 6, SIZE, SIZE) * 2 - 1
    flow = torch.rand(2, SIZE, SIZE, 2) * 2.2 - 1.1  # some points outside the map
    return gen, (src_in, tsf_in, flow)


@torch.no_grad()
def _transfer(gen, inputs, device, dtype=torch.float32, autocast=None):
    gen = gen.to(device, dtype)
    src_in, tsf_in, flow = (t.to(device, dtype) for t in inputs)
    if autocast is None:
        out = gen.transfer(gen.encode_source(src_in), tsf_in, flow)
    else:
        with torch.autocast(device_type="cuda", dtype=autocast):
            out = gen.transfer(gen.encode_source(src_in), tsf_in, flow)
    return torch.cat([out.color, out.attention], 1).double().cpu()


@pytest.mark.gpu
def test_fp32_convolutions_on_cuda_are_ieee():
    assert resolve_runtime("cuda", "fp32").dtype == torch.float32
    assert not torch.backends.cudnn.allow_tf32
    torch.manual_seed(0)
    x, w = torch.randn(2, 64, 64, 64, dtype=torch.float64), torch.randn(64, 64, 3, 3, dtype=torch.float64)
    reference = torch.nn.functional.conv2d(x, w, padding=1)
    xf, wf = x.float().double(), w.float().double()  # the float32 inputs, exactly
    exact = torch.nn.functional.conv2d(xf, wf, padding=1)
    size = torch.nn.functional.conv2d(xf.abs(), wf.abs(), padding=1)
    out = torch.nn.functional.conv2d(x.float().cuda(), w.float().cuda(), padding=1).double().cpu()
    # IEEE float32 sums of 576 products in any order: |err| <= gamma_prob(576) |W| * |X| (support/fp.py),
    # ~1.4e-5 of it. TF32 rounds every input to 10 bits (2^-11): ~4.9e-4 sqrt(576) of the values, which
    # is ~2x that bound on a typical value and far above it at the worst one.
    assert ((out - exact).abs() <= gamma_prob(576) * size).all()
    assert (out - reference).abs().max() < 0.01 * reference.abs().max()


@pytest.mark.gpu
def test_fp32_generator_on_cuda_matches_the_cpu_to_float32_rounding():
    resolve_runtime("cuda", "fp32")
    gen, inputs = _generator_and_inputs()
    gen.fast_cpu = False
    reference = _transfer(gen, inputs, "cpu", torch.float64)
    cpu_err = (_transfer(gen, inputs, "cpu") - reference).abs()
    cuda_err = (_transfer(gen, inputs, "cuda") - reference).abs()
    # One float32 run against float64: support/fp.py's network error model (outputs in [-1, 1]);
    # TF32's 2^-11 per product would be ~8000x larger.
    tol = network_tolerance(gen, lambda: _transfer(gen, inputs, "cpu"), runs=1)
    assert cpu_err.max() < tol and cuda_err.max() < tol, (cpu_err.max(), cuda_err.max(), tol)


@pytest.mark.gpu
def test_fp16_autocast_stays_close_to_fp32_on_cuda():
    resolve_runtime("cuda", "fp32")
    gen, inputs = _generator_and_inputs(1)
    fp32 = _transfer(gen, inputs, "cuda")
    fp16 = _transfer(gen, inputs, "cuda", autocast=torch.float16)
    assert torch.isfinite(fp16).all()
    err = (fp16 - fp32).abs()
    assert err.mean() < 5e-3 and err.max() < 0.1, (err.mean(), err.max())


def _frames(path) -> np.ndarray:
    from impersonator_cli.io.video import read_frames

    with read_frames(path) as frames:
        return np.stack(list(frames)).astype(np.int16)


@pytest.mark.gpu
def test_imitation_on_cuda_gives_the_cpu_frames(tmp_path, demo_world):
    from impersonator_cli.weights.checkpoints import save_safetensors
    from impersonator_cli.api import ImitateOptions, Impersonator, SourceOptions
    from support.e2e_world import FRAMES

    files = demo_world.files  # 256 x 256, like SIZE
    torch.manual_seed(2)
    gen = init_weights(LiquidWarpingGenerator(conv_dim=32, repeat_num=2))
    path = save_safetensors(gen.state_dict(), tmp_path / "gen.safetensors",
                            {"arch": "ImpersonatorGenerator", "conv_dim": 32, "repeat_num": 2})
    out = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "fp16")):
        imp = Impersonator(weights_dir=files.weights_dir, device=device, precision=precision, generator=str(path),
                           size=SIZE)
        src = imp.prepare(files.source, smpl=files.source_smpl, options=SourceOptions(crop="full"))
        result = imp.imitate([src], files.motion, tmp_path / f"{device}-{precision}.mp4",
                             options=ImitateOptions(crf=0))
        out[device, precision] = _frames(result.output)
    cpu = out["cpu", "fp32"]
    assert len(cpu) == FRAMES and np.abs(cpu[1:] - cpu[:-1]).mean() > 1  # the frames change
    for key in (("cuda", "fp32"), ("cuda", "fp16")):
        diff = np.abs(out[key] - cpu)
        # rounding, and rasterizer ties at a few silhouette pixels
        assert diff.mean() < 1.0 and (diff > 16).mean() < 2e-3, (key, diff.mean(), (diff > 16).mean())


@pytest.mark.gpu
def test_nvenc_writes_a_video_that_decodes_to_the_frames(tmp_path):
    from impersonator_cli.io.probe import probe
    from impersonator_cli.io.encode import VideoWriter
    from impersonator_cli.io.probe import ffmpeg_info

    if not ffmpeg_info().h264_nvenc:
        pytest.skip("this ffmpeg has no h264_nvenc")
    y, x = np.mgrid[0:240, 0:320]
    frames = [np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, np.full_like(x, 128)], -1).astype(np.uint8)
              for i in range(12)]
    with VideoWriter(tmp_path / "nvenc.mp4", 25, codec="h264_nvenc", crf=18) as writer:
        for frame in frames:
            writer.write(frame)
    info = probe(tmp_path / "nvenc.mp4")
    assert info.frame_count == 12 and (info.width, info.height) == (320, 240)
    assert np.abs(_frames(tmp_path / "nvenc.mp4") - np.stack(frames)).mean() < 4
