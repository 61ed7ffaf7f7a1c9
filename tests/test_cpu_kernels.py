"""Fast CPU inference kernels: each one against an independent reference (float64 convolution,
PyTorch's instance norm and grid_sample, the textbook Winograd matrices), and the whole generator in
fast mode against its reference kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from impersonator_cli.gan import cpu_kernels as ck
from impersonator_cli.gan.blocks import Conv2d
from impersonator_cli.gan.generator import LiquidWarpingGenerator

CL = torch.channels_last


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=CL)


def test_transform_formulas_equal_the_winograd_matrices():
    g = torch.Generator().manual_seed(0)
    d = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(6)]
    out = [torch.empty(3, 5, dtype=torch.float64) for _ in range(6)]
    ck._input_transform(d, out)
    expect = torch.einsum("ai,ixy->axy", torch.tensor(ck._BT, dtype=torch.float64), torch.stack(d))
    assert torch.allclose(torch.stack(out), expect, atol=1e-12)
    out4 = [torch.empty(3, 5, dtype=torch.float64) for _ in range(4)]
    ck._output_transform(d, out4)
    expect = torch.einsum("ai,ixy->axy", torch.tensor(ck._AT, dtype=torch.float64), torch.stack(d))
    assert torch.allclose(torch.stack(out4), expect, atol=1e-12)
    w = torch.randn(4, 3, 3, 3, generator=g)
    G = torch.tensor(ck._G, dtype=torch.float64)
    expect = torch.einsum("ak,oikl,bl->abio", G, w.double(), G).reshape(36, 3, 4)
    assert torch.allclose(ck.winograd_filter(w).double(), expect, atol=1e-6)


@pytest.mark.parametrize("b, c, co, h, w", [
    (1, 512, 512, 32, 32),   # the res-block layer of a 256 x 256 frame
    (7, 256, 320, 30, 22),   # sizes not divisible by 4; 48 tiles an image: groups of 5 and 2 images
    (2, 16, 24, 70, 66),     # 18 x 17 tiles an image: bands of 15 and 3 tile rows
])
def test_winograd_convolution_matches_a_float64_reference(b, c, co, h, w):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, c, h, w, generator=g)
    weight = torch.randn(co, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5
    y = ck.winograd_conv3x3(_cl(x), ck.winograd_filter(weight))
    ref = F.conv2d(x.double(), weight.double(), padding=1)
    direct = F.conv2d(x, weight, padding=1)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=CL)
    scale = ref.abs().max().item()
    assert (y.double() - ref).abs().max().item() < 2e-5 * scale
    # Same order of rounding error as PyTorch's own float32 convolution.
    assert (y.double() - ref).abs().max() < 20 * (direct.double() - ref).abs().max() + 1e-6


def test_conv_module_uses_winograd_only_for_fast_inputs_and_follows_weight_updates():
    torch.manual_seed(2)
    conv = Conv2d(256, 256, 3, padding=1, bias=False)
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        ref = F.conv2d(x, conv.weight, padding=1)
        fast = conv(_cl(x))
        assert conv._winograd is not None and not torch.equal(fast, ref)
        assert torch.allclose(fast, ref, atol=1e-4)
        conv.weight.mul_(-2.0)  # in-place update (as an optimiser or load_state_dict does)
        assert torch.allclose(conv(_cl(x)), -2.0 * ref, atol=2e-4)
    y = conv(_cl(x))  # gradients on: PyTorch's kernel, exactly
    assert y.requires_grad and torch.equal(y.detach(), F.conv2d(_cl(x), conv.weight, padding=1).detach())
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, padding=1))  # NCHW input: plain path


def test_fast_path_conditions():
    x = _cl(torch.randn(1, 4, 6, 6))
    with torch.no_grad():
        assert ck.fast_path(x)
        assert not ck.fast_path(x.contiguous())
        assert not ck.fast_path(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not ck.fast_path(x)
    assert not ck.fast_path(x)  # gradients enabled


@pytest.mark.parametrize("shape", [(3, 24, 17, 9), (2, 8, 64, 70)])  # one / several row blocks
def test_channels_last_instance_norm_matches_pytorch(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g) * 4 + 2
    weight, bias = torch.rand(shape[1], generator=g) + 0.5, torch.randn(shape[1], generator=g)
    y = ck.instance_norm_cl(_cl(x), weight, bias, 1e-5)
    ref = F.instance_norm(x.double(), weight=weight.double(), bias=bias.double(), eps=1e-5)
    assert y.is_contiguous(memory_format=CL)
    assert (y.double() - ref).abs().max() < 1e-5
    plain = ck.instance_norm_cl(_cl(x), None, None, 1e-5)
    assert torch.allclose(plain, F.instance_norm(x, eps=1e-5), atol=1e-5)


def test_shared_bilinear_taps_equal_grid_sample():
    g = torch.Generator().manual_seed(4)
    maps = [torch.randn(1, c, 12, 16, generator=g) for c in (3, 5, 2)]
    grid = torch.rand(2, 7, 9, 2, generator=g) * 2.6 - 1.3  # some points outside the map
    grid[0, 0, 0] = torch.tensor([-1.0, -1.0])  # exact corners and edges
    grid[0, 0, 1] = torch.tensor([1.0, 1.0])
    grid[0, 0, 2] = torch.tensor([1.0, -0.3])
    grid[1, :3] = -2.0  # "no correspondence"
    taps = ck.bilinear_taps(grid, (12, 16))
    out = ck.sample_rows(ck.flatten_maps(maps), taps, (2, 7, 9)).split([3, 5, 2], dim=1)
    for m, o in zip(maps, out):
        ref = F.grid_sample(m.expand(2, -1, -1, -1).double(), grid.double(), mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        assert (o.double() - ref).abs().max() < 1e-5
    assert out[0][1, :, :3].abs().max() == 0


@pytest.fixture(scope="module")
def twin_generators():
    """Two generators with the same weights, reference and fast kernels; bottleneck 256 wide so
    the res-blocks take the Winograd path."""
    torch.manual_seed(5)
    ref = LiquidWarpingGenerator(conv_dim=32, repeat_num=3).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
    ref.fast_cpu = False
    fast = LiquidWarpingGenerator(conv_dim=32, repeat_num=3).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _flow(b: int, s: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    T = torch.stack([xs, ys], -1).expand(b, s, s, 2) * 0.8 + 0.1 * torch.randn(b, s, s, 2, generator=g)
    T[:, : s // 5] = -2.0
    return T.contiguous()


@torch.no_grad()
def test_fast_generator_computes_what_the_reference_kernels_compute(twin_generators):
    ref, fast = twin_generators
    s, b = 64, 3
    g = torch.Generator().manual_seed(6)
    src_a, src_b = (torch.rand(1, 6, s, s, generator=g) * 2 - 1 for _ in range(2))
    tsf_in = torch.rand(b, 6, s, s, generator=g) * 2 - 1
    bg_in = torch.rand(b, 4, s, s, generator=g) * 2 - 1
    Ta, Tb = _flow(b, s, 7), _flow(b, s, 8)

    def run(net):
        fa, fb = net.encode_source(src_a), net.encode_source(src_b)
        return (*net.transfer(fa, tsf_in, Ta), *net.swap(tsf_in, [fa, fb], [Ta, Tb]),
                *net.decode_source(fa), net.background(bg_in))

    outs_ref, outs_fast = run(ref), run(fast)
    for r, f in zip(outs_ref, outs_fast):
        assert r.shape == f.shape and f.is_contiguous()
        assert (r - f).abs().max() < 1e-4
    assert not torch.equal(outs_ref[0], outs_fast[0])  # the fast kernels did run


_FAULTS = """
import resource, sys, torch
from impersonator_cli.devices import tune_cpu_allocator
tuned = tune_cpu_allocator() if sys.argv[1] == "1" else False
for _ in range(15):  # warm-up: the heap settles after a few rounds
    x = torch.empty(16 << 20).fill_(1.0)  # 64 MB, above glibc's largest mmap threshold
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.empty(16 << 20).fill_(1.0)
    del x
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_allocator_tuning_stops_page_faults_on_large_tensors():
    def faults(tune: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, tune], capture_output=True, text=True, check=True)
        tuned, count = out.stdout.split()
        return int(tuned), int(count)

    tuned, with_tuning = faults("1")
    _, without = faults("0")
    assert without > 5 * 16000  # each 64 MB tensor faulted in afresh (16k pages)
    if tuned:
        assert with_tuning < 1000
