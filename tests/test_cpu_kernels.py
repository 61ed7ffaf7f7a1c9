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
from support.fp import gamma, gamma_prob, network_tolerance
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
    # float64, at most 4 terms of |coefficient| <= 5 per value: error <= gamma_4(2^-53) * 20 * max|d| ~ 1e-14
    assert torch.allclose(torch.stack(out), expect, rtol=0, atol=1e-12)
    out4 = [torch.empty(3, 5, dtype=torch.float64) for _ in range(4)]
    ck._output_transform(d, out4)
    expect = torch.einsum("ai,ixy->axy", torch.tensor(ck._AT, dtype=torch.float64), torch.stack(d))
    assert torch.allclose(torch.stack(out4), expect, rtol=0, atol=1e-12)
    w = torch.randn(4, 3, 3, 3, generator=g)
    G = torch.tensor(ck._G, dtype=torch.float64)
    expect = torch.einsum("ak,oikl,bl->abio", G, w.double(), G).reshape(36, 3, 4)
    # float32: G's entries rounded (1 rounding each, two factors), two 3-term sums: 8 roundings of
    # the |.|-weighted sum |G| |w| |G^T|
    size = torch.einsum("ak,oikl,bl->abio", G.abs(), w.double().abs(), G.abs()).reshape(36, 3, 4)
    assert ((ck.winograd_filter(w).double() - expect).abs() <= gamma(8) * size).all()


def _abs_winograd(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """|A^T| [sum_c (|G| |g_c| |G^T|) * (|B^T| |d_c| |B|)] |A| for every output pixel, in float64: the
    Winograd algorithm with every matrix and input replaced by its absolute value (B x Co x H x W)."""
    m, a = ck._M, ck._A
    b, _, h, w = x.shape
    th, tw = -(-h // m), -(-w // m)
    AT, G, BT = (torch.tensor(t, dtype=torch.float64).abs() for t in (ck._AT, ck._G, ck._BT))
    xp = F.pad(x.double().abs(), (1, m * tw + 1 - w, 1, m * th + 1 - h))
    d = xp.unfold(2, a, m).unfold(3, a, m)                                 # B x C x th x tw x 6 x 6
    v = torch.einsum("ap,bq,nctspq->abncts", BT, BT, d)
    u = torch.einsum("ak,bl,ockl->abco", G, G, weight.double().abs())
    mm = torch.einsum("abco,abncts->abnots", u, v)
    y = torch.einsum("ia,jb,abnots->notisj", AT, AT, mm)                   # B x Co x th x 4 x tw x 4
    return y.reshape(b, -1, m * th, m * tw)[:, :, :h, :w]


def test_winograd_magnitude_amplification_of_the_transform_matrices():
    """Where the Winograd error bound's constant comes from: per output row i of a 4 x 4 tile,
    sum_{k,p} sum_a |A^T_ia| |G_ak| |B^T_ap| is 16, 17, 24, 48 (direct convolution: 3), so for inputs and
    filters of uniform magnitude the worst output pixel's |.|-sum is 48^2 / 9 = 256 times that of the
    direct convolution's |W| * |X|."""
    ones_x, ones_w = torch.ones(1, 1, 12, 12), torch.ones(1, 1, 3, 3)
    wino = _abs_winograd(ones_x, ones_w)[0, 0, 4:8, 4:8]  # the tile whose 6 x 6 inputs are all inside
    direct = F.conv2d(ones_x.double(), ones_w.double(), padding=1)[0, 0, 4:8, 4:8]
    assert torch.equal(direct, torch.full((4, 4), 9.0, dtype=torch.float64))
    row = torch.tensor([16.0, 17.0, 24.0, 48.0], dtype=torch.float64)
    assert torch.allclose(wino, row[:, None] * row[None, :], rtol=1e-12)
    assert float(wino.max() / direct.max()) == pytest.approx(256, rel=1e-12)


@pytest.mark.parametrize("b, c, co, h, w", [
    (1, 512, 512, 32, 32),   # the res-block layer of a 256 x 256 frame
    (7, 256, 320, 30, 22),   # sizes not divisible by 4; 48 tiles an image: groups of 5 and 2 images
    (2, 16, 24, 70, 66),     # 18 x 17 tiles an image: bands of 15 and 3 tile rows
])
def test_winograd_convolution_matches_a_float64_reference(b, c, co, h, w):
    """Error bound, per output pixel, from the float32 arithmetic of F(4x4, 3x3) (support/fp.py):
    a path from the inputs to an output goes through at most n = c + 20 roundings: the filter
    transform (G's entries 1/6, 1/12, 1/24 rounded, then two 3-term sums: 8), the input transform
    (two stages of at most 3 roundings: 6), the c-term channel sum of the products (c), and the
    output transform (two stages of at most 3: 6). So |y - y_exact| <= theta_n * S with
    S = |A^T| [sum_c (|G| |g| |G^T|) * (|B^T| |d| |B|)] |A| (computed in float64 by _abs_winograd;
    up to 256 x |W| * |X|, see the test above) and theta_n <= gamma_prob(n) ~ 10 sqrt(n) 2^-24, the
    probabilistic bound that holds for any summation order. The deterministic gamma_n = n 2^-24
    bounds every value without exception."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, c, h, w, generator=g)
    weight = torch.randn(co, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5
    y = ck.winograd_conv3x3(_cl(x), ck.winograd_filter(weight))
    ref = F.conv2d(x.double(), weight.double(), padding=1)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=CL)
    err, size = (y.double() - ref).abs(), _abs_winograd(x, weight)
    n = c + 20
    assert (err <= gamma_prob(n) * size).all(), float((err / size).max())
    assert (err <= gamma(n) * size).all()
    # The bound stays far below the values themselves (3% of them on average for c = 512): a wrong
    # tap, tile or transform entry, an O(1) relative error, shows.
    assert float((gamma_prob(n) * size).mean()) < 0.1 * float(ref.abs().mean())


def test_conv_module_uses_winograd_only_for_fast_inputs_and_follows_weight_updates():
    torch.manual_seed(2)
    conv = Conv2d(256, 256, 3, padding=1, bias=False)
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        ref = F.conv2d(x, conv.weight, padding=1)
        exact = F.conv2d(x.double(), conv.weight.double(), padding=1)
        bound = gamma_prob(256 + 20) * _abs_winograd(x, conv.weight)  # see the float64 reference test
        fast = conv(_cl(x))
        assert conv._winograd is not None and not torch.equal(fast, ref)
        assert ((fast.double() - exact).abs() <= bound).all()
        conv.weight.mul_(-2.0)  # in-place update (as an optimiser or load_state_dict does); exact
        assert ((conv(_cl(x)).double() + 2.0 * exact).abs() <= 2.0 * bound).all()
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
    assert ((y.double() - ref).abs() <= _instance_norm_bound(x, weight, bias)).all()
    plain = ck.instance_norm_cl(_cl(x), None, None, 1e-5)
    ref = F.instance_norm(x.double(), eps=1e-5)
    assert ((plain.double() - ref).abs() <= _instance_norm_bound(x, torch.ones(shape[1]), torch.zeros(shape[1]))).all()


def _instance_norm_bound(x, weight, bias):
    """Float32 error of y = w (x - mu) / sigma + b, per value, for n = H W values per channel: the mean
    is off by theta_{n+1} mean|x|; the two-pass sum of squares (positive terms) by a relative theta_{n+2},
    rsqrt, eps and the division by n add 4 roundings (halved by the square root); scale, shift and the
    fused multiply-add 3 more. With theta = gamma_prob(n + 8) (any summation order):
    |dy| <= theta (|w| (|x - mu| + mean|x| + |x| + |mu|) / sigma + |b|)."""
    xd = x.double()
    n = x.shape[2] * x.shape[3]
    mu = xd.mean((2, 3), keepdim=True)
    sigma = (xd.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    w, b = weight.double().view(1, -1, 1, 1), bias.double().view(1, -1, 1, 1)
    terms = (xd - mu).abs() + xd.abs().mean((2, 3), keepdim=True) + xd.abs() + mu.abs()
    return gamma_prob(n + 8) * (w.abs() * terms / sigma + b.abs())


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
        ref, size = (F.grid_sample(v.expand(2, -1, -1, -1).double(), grid.double(), mode="bilinear",
                                   padding_mode="zeros", align_corners=True) for v in (m, m.abs()))
        # taps in float64, weights rounded to float32 (1), a 4-term weighted sum (4): gamma_5 of the
        # same bilinear sum taken over |map|
        assert ((o.double() - ref).abs() <= gamma(5) * size).all()
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
    tol = network_tolerance(ref, lambda: run(ref))  # outputs in [-1, 1] (tanh, sigmoid); see support/fp.py
    for r, f in zip(outs_ref, outs_fast):
        assert r.shape == f.shape and f.is_contiguous()
        assert (r - f).abs().max() < tol
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
