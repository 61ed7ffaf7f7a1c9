"""Liquid Warping GAN generator: official layout, additive LWB fusion, encode-once inference."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import torch.nn.functional as F

from impersonator_cli.gan.blocks import init_weights
from impersonator_cli.gan.generator import (
    LiquidWarpingGenerator, ResUnetGenerator, SourceFeatures, compose, lwb_warp,
)
from support.fp import gamma, network_tolerance

S = 32  # image size for the small nets (divisible by 2**n_down)


def _manifest() -> dict:
    text = resources.files("impersonator_cli.weights").joinpath("official_state_dicts.json").read_text()
    return json.loads(text)


def _shapes(module: torch.nn.Module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _identity_grid(b: int, h: int, w: int) -> torch.Tensor:
    """B x H x W x 2 identity flow in the align_corners=True convention."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([xs, ys], dim=-1).expand(b, h, w, 2).clone()


def _random_flow(b: int, seed: int) -> torch.Tensor:
    """Random flow with a -2 'no correspondence' block (the background)."""
    g = torch.Generator().manual_seed(seed)
    T = _identity_grid(b, S, S) + 0.3 * torch.randn(b, S, S, 2, generator=g)
    T[:, : S // 4] = -2.0
    return T


@pytest.fixture(scope="module", params=[False, True], ids=["reference-kernels", "fast-cpu-kernels"])
def gen(request) -> LiquidWarpingGenerator:
    """Bottleneck width 256, so the fast CPU mode runs its Winograd res-block convolutions."""
    torch.manual_seed(0)
    g = LiquidWarpingGenerator(conv_dim=32, repeat_num=2).eval()
    g.fast_cpu = request.param
    with torch.no_grad():  # non-trivial norm affine parameters
        for name, p in g.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else
                        0.2 * torch.randn_like(p))
    return g


@pytest.fixture(scope="module")
def tol(gen) -> float:
    """How far two float32 evaluations of the same outputs (|.| <= 1: tanh, sigmoid) may differ when
    their sums run in other orders: support/fp.py's network error model over a full forward pass of
    every stream (about 3e-3 here)."""
    src_in, tsf_in, T = _inputs(2, 0)
    return network_tolerance(gen, lambda: gen(torch.rand(2, 4, S, S), src_in, tsf_in, T))


def _inputs(b: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 6, S, S, generator=g) * 2 - 1,
            torch.rand(b, 6, S, S, generator=g) * 2 - 1, _random_flow(b, seed))


def _reference_infer_front(g, src_in, tsf_in, T):
    """Lock-step two-stream pass written directly from the method description (slow reference)."""
    def W(f, T):
        grid = F.interpolate(T.permute(0, 3, 1, 2), size=f.shape[-2:], mode="bilinear",
                             align_corners=True).permute(0, 2, 3, 1)
        return F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    s, t = g.src_model, g.tsf_model
    sx, tx = s.encoders[0](src_in), t.encoders[0](tsf_in)
    s_outs, t_outs = [sx], [tx]
    for i in (1, 2, 3):
        sx = s.encoders[i](sx)
        tx = t.encoders[i](tx) + W(sx, T)
        s_outs.append(sx)
        t_outs.append(tx)
    for j in range(len(s.resnets)):
        sx = s.resnets[j](sx)
        tx = t.resnets[j](tx) + W(sx, T)

    def decode(m, x, outs):
        for i in range(3):
            x = m.skippers[i](torch.cat([outs[2 - i], m.decoders[i](x)], dim=1))
        return m.img_reg(x), m.attetion_reg(x)

    return (*decode(s, sx, s_outs), *decode(t, tx, t_outs))


# ------------------------------------------------------------------------------- official layout

def test_state_dict_matches_official_manifest():
    manifest = _manifest()
    with torch.device("meta"):
        g = LiquidWarpingGenerator()
    assert _shapes(g) == manifest["generator"]
    counts = manifest["counts"]
    assert sum(p.numel() for p in g.parameters()) == counts["generator"]["num_parameters"]
    assert sum(b.numel() for b in g.buffers()) == 0
    for part in ("bg_model", "src_model", "tsf_model"):
        n = sum(p.numel() for p in getattr(g, part).parameters())
        assert n == counts[f"generator.{part}"]["num_parameters"]
    assert all("bias" not in k for k, v in manifest["generator"].items() if len(v) == 4)


def test_without_bg_stream_keys_are_the_official_minus_bg_model():
    with torch.device("meta"):
        g = LiquidWarpingGenerator(bg_stream=False)
    expected = {k: v for k, v in _manifest()["generator"].items() if not k.startswith("bg_model.")}
    assert _shapes(g) == expected


def test_strict_load_of_a_manifest_shaped_state_dict():
    g = LiquidWarpingGenerator(conv_dim=8, repeat_num=2)
    sd = {k: torch.randn_like(v) for k, v in g.state_dict().items()}
    g.load_state_dict(sd, strict=True)
    assert torch.equal(g.tsf_model.attetion_reg[0].weight, sd["tsf_model.attetion_reg.0.weight"])


# --------------------------------------------------------------------------------------- warping

def test_grid_sample_convention_is_align_corners_true():
    f = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 5, 5).contiguous()  # value = column index
    T = _identity_grid(1, 5, 5)
    assert torch.allclose(lwb_warp(f, T), f, atol=1e-6)
    # x = -1 is the centre of column 0 (align_corners=False would give half of it, 0.5 * 0 ... 0)
    T_edge = torch.full((1, 5, 5, 2), -1.0)
    T_edge[..., 0] = -1.0 + 2.0 / 4 * 0.5  # half a pixel right of column 0 -> value 0.5 exactly
    assert torch.allclose(lwb_warp(f, T_edge), torch.full_like(f, 0.5), atol=1e-6)
    # shifting the grid by 2/(W-1) in x moves the image by exactly one pixel
    T_shift = T.clone()
    T_shift[..., 0] += 2.0 / 4
    out = lwb_warp(f, T_shift)
    assert torch.allclose(out[..., :4], f[..., 1:], atol=1e-6)
    assert torch.all(out[..., 4] == 0)  # sampled outside -> zero padding


def test_warp_at_identity_reproduces_features_after_flow_resize():
    f = torch.randn(2, 7, 8, 8)
    T = _identity_grid(2, 64, 64)  # resized 64 -> 8 with align_corners=True stays the identity
    # float32: the sampling position (linspace, a 2 x 2 resize, the pixel scaling: 8 roundings of
    # values <= 1, times W - 1 = 7 pixels) is off by <= gamma_8 * 7 pixels in x and in y, which moves a
    # bilinear sample by at most that times the largest neighbour difference; the 4-tap sum adds gamma_4.
    step = max((f[..., 1:] - f[..., :-1]).abs().max(), (f[..., 1:, :] - f[..., :-1, :]).abs().max())
    bound = 2 * gamma(8) * 7 * step + gamma(4) * f.abs().max()
    assert (lwb_warp(f, T) - f).abs().max() <= bound


def test_background_sentinel_gives_zero_features():
    f = torch.randn(1, 3, 8, 8)
    T = torch.full((1, 32, 32, 2), -2.0)
    assert torch.count_nonzero(lwb_warp(f, T)) == 0


# --------------------------------------------------------------------------------- LWB inference

@torch.no_grad()
def test_infer_front_equals_lockstep_reference(gen, tol):
    src_in, tsf_in, T = _inputs(2, 1)
    ours = gen.infer_front(src_in, tsf_in, T)
    ref = _reference_infer_front(gen, src_in, tsf_in, T)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max() < tol
    # and the fusion matters: without it the transfer stream gives something else
    plain = gen.tsf_model(gen.compute_layout(tsf_in))
    assert (plain.color - ours.color_tsf).abs().max() > 20 * tol


@torch.no_grad()
def test_encode_once_then_transfer_equals_full_forward(gen, tol):
    src_in, tsf_in, T = _inputs(2, 2)
    bg_in = torch.rand(2, 4, S, S)
    full = gen(bg_in, src_in, tsf_in, T)
    feats = gen.encode_source(src_in)
    P, A = gen.transfer(feats, tsf_in, T)
    assert (P - full.color_tsf).abs().max() < tol
    assert (A - full.attention_tsf).abs().max() < tol
    assert torch.equal(gen.background(bg_in), full.background)  # the same computation
    assert len(feats.encoder) == 4 and len(feats.resnet) == 2 and len(feats.fused) == 5
    assert torch.equal(gen.decode_source(feats).color, full.color_src)


@torch.no_grad()
def test_outputs_ranges(gen):
    src_in, tsf_in, T = _inputs(2, 3)
    out = gen(torch.rand(2, 4, S, S), src_in, tsf_in, T)
    for img in (out.background, out.color_src, out.color_tsf):
        assert img.shape == (2, 3, S, S) and img.abs().max() < 1
    for att in (out.attention_src, out.attention_tsf):
        assert att.shape == (2, 1, S, S) and att.min() > 0 and att.max() < 1


@torch.no_grad()
def test_no_correspondence_reduces_to_plain_transfer_stream(gen):
    src_in, tsf_in, _ = _inputs(1, 4)
    feats = gen.encode_source(src_in)
    P, A = gen.transfer(feats, tsf_in, torch.full((1, S, S, 2), -2.0))
    plain = gen.tsf_model(gen.compute_layout(tsf_in))
    assert torch.equal(P, plain.color) and torch.equal(A, plain.attention)
    zero = SourceFeatures(tuple(map(torch.zeros_like, feats.encoder)),
                          tuple(map(torch.zeros_like, feats.resnet)))
    P0, _ = gen.transfer(zero, tsf_in, _identity_grid(1, S, S))
    assert torch.equal(P0, plain.color)  # adding warped zeros is exact


@torch.no_grad()
def test_swap_is_additive_over_sources(gen, tol):
    src_a, tsf_in, T_a = _inputs(1, 5)
    src_b, _, T_b = _inputs(1, 6)
    fa, fb = gen.encode_source(src_a), gen.encode_source(src_b)
    one = gen.transfer(fa, tsf_in, T_a)
    # a second source with no correspondence anywhere adds exactly nothing
    two = gen.swap(tsf_in, [fa, fa], [T_a, torch.full_like(T_a, -2.0)])
    assert torch.equal(one.color, two.color) and torch.equal(one.attention, two.attention)
    # order of the sources does not matter; a real second source does change the result
    ab = gen.swap(tsf_in, [fa, fb], [T_a, T_b])
    ba = gen.swap(tsf_in, [fb, fa], [T_b, T_a])
    assert (ab.color - ba.color).abs().max() < tol
    assert (ab.color - one.color).abs().max() > 20 * tol
    # two sources == one source whose features are the warped sum, when both flows are identity
    ident = _identity_grid(1, S, S)
    summed = SourceFeatures(tuple(a + b for a, b in zip(fa.encoder, fb.encoder)),
                            tuple(a + b for a, b in zip(fa.resnet, fb.resnet)))
    assert (gen.swap(tsf_in, [fa, fb], [ident, ident]).color
            - gen.transfer(summed, tsf_in, ident).color).abs().max() < tol
    with pytest.raises(ValueError):
        gen.swap(tsf_in, [fa], [T_a, T_b])


@torch.no_grad()
def test_batch_of_frames_with_broadcast_source_equals_per_frame(gen, tol):
    src_in, _, _ = _inputs(1, 7)
    _, tsf_in, T = _inputs(3, 8)
    feats = gen.encode_source(src_in)
    batched = gen.transfer(feats, tsf_in, T)
    for i in range(3):
        single = gen.transfer(feats, tsf_in[i:i + 1], T[i:i + 1])
        assert (batched.color[i] - single.color[0]).abs().max() < tol
        assert (batched.attention[i] - single.attention[0]).abs().max() < tol


def test_gradients_reach_the_source_stream_through_the_lwb(gen):
    src_in, tsf_in, T = _inputs(1, 9)
    gen.zero_grad()
    P, A = gen.transfer(gen.encode_source(src_in), tsf_in, T)
    (P.sum() + A.sum()).backward()
    assert gen.src_model.encoders[1][0].weight.grad.abs().sum() > 0
    assert gen.src_model.resnets[-1].main[0].weight.grad.abs().sum() > 0
    assert gen.src_model.img_reg[0].weight.grad is None  # source heads are not on this path
    gen.zero_grad(set_to_none=True)


@torch.no_grad()
def test_bf16_autocast_runs_and_stays_close(gen):
    src_in, tsf_in, T = _inputs(1, 10)
    ref = gen.transfer(gen.encode_source(src_in), tsf_in, T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = gen.transfer(gen.encode_source(src_in), tsf_in, T)
    assert (low.color.float() - ref.color).abs().max() < 0.1


def test_compose_and_plain_resunet():
    P, bg = torch.full((1, 3, 2, 2), -0.5), torch.full((1, 3, 2, 2), 0.75)
    A = torch.tensor([0.0, 1.0, 0.25, 1.0]).view(1, 1, 2, 2)
    out = compose(P, A, bg)
    assert torch.allclose(out.flatten(2)[0, 0], torch.tensor([-0.5, 0.75, -0.1875, 0.75]))
    net = init_weights(ResUnetGenerator(c_dim=6, conv_dim=8, repeat_num=1))
    assert 0.015 < net.encoders[0][0].weight.std() < 0.025
    P, A = net(torch.randn(1, 6, 16, 24))  # non-square works
    assert P.shape == (1, 3, 16, 24) and A.shape == (1, 1, 16, 24)
