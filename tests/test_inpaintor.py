"""DeepFillv2-style background inpaintor: official layout, gated convs, attention, hole handling."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import torch.nn.functional as F

from support.fp import gamma, gamma_prob
from impersonator_cli.gan.blocks import init_weights
from impersonator_cli.gan.inpaintor import (
    GatedConv, GatedDeconv, InpaintSANet, SelfAttention, attention_fast, attention_reference,
)


def _manifest() -> dict:
    text = resources.files("impersonator_cli.weights").joinpath("official_state_dicts.json").read_text()
    return json.loads(text)


def _randomize_bn(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


@pytest.fixture(scope="module")
def net() -> InpaintSANet:
    torch.manual_seed(0)
    n = InpaintSANet(cnum=8)
    _randomize_bn(n)
    with torch.no_grad():  # weights large enough that the input still matters after 17+ gated layers
        for m in n.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1):
                m.weight.normal_(0.0, 2.5 / m.weight[0].numel() ** 0.5)
        n.refine_attn.gamma.fill_(0.7)  # exercise the attention branch
    return n.eval()


def _image_and_mask(h: int = 32, w: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 1.0
    return img, mask


def test_state_dict_matches_official_manifest():
    manifest = _manifest()
    with torch.device("meta"):
        net = InpaintSANet()
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert shapes == manifest["bg_inpaintor_deepfillv2"]
    counts = manifest["counts"]["bg_inpaintor_deepfillv2"]
    assert sum(p.numel() for p in net.parameters()) == counts["num_parameters"]
    assert sum(b.numel() for b in net.buffers()) == counts["num_buffer_elements"]
    assert (len(net.coarse_net), len(net.refine_conv_net), len(net.refine_upsample_net)) == (17, 11, 7)


def test_gated_conv_formula_and_padding():
    torch.manual_seed(1)
    block = GatedConv(3, 5, 4, stride=2)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, 3, 12, 10)
    y = block(x)
    assert y.shape == (2, 5, 6, 5)  # 4x4 stride 2 halves exactly
    bn = block.batch_norm2d
    with torch.no_grad():  # the block's own float32 convolutions, then the formula in float64
        feature, gate = block.conv2d(x).double(), block.mask_conv2d(x).double()
    mean, var, w, b = (t.detach().double().view(1, -1, 1, 1) for t in (bn.running_mean, bn.running_var,
                                                                       bn.weight, bn.bias))
    gated = F.leaky_relu(feature, 0.2) * torch.sigmoid(gate)
    ref = (gated - mean) / torch.sqrt(var + bn.eps) * w + b
    # float32 after the convolutions: sigmoid (exp, add, divide: <= 4 roundings), the gating product,
    # the batch-norm affine (subtract, sqrt, add, divide, multiply, add): gamma_12 of the terms' sizes
    bound = gamma(12) * ((gated.abs() + mean.abs()) / torch.sqrt(var + bn.eps) * w.abs() + b.abs())
    assert ((y.double() - ref).abs() <= bound).all()
    lin = GatedConv(3, 3, 3, activation=False).eval()
    z = lin(x)  # output layer: no LeakyReLU, so negative features survive the gate
    assert z.shape == x.shape and (z < -1e-3).any()
    assert GatedConv(3, 3, 3, dilation=8)(x).shape == x.shape
    assert GatedConv(3, 3, 5)(x).shape == x.shape
    up = GatedDeconv(3, 4).eval()  # nearest x2 (each pixel repeated 2x2), then a 3x3 gated conv
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.equal(up(x), up.conv2d(nearest))


def _attention_bound(q, k, v):
    """Per output value, how far any float32 evaluation of softmax(q^T k) v may be from the exact one
    (q, k: B x C x N, v: B x C' x N). A logit q_i . k_j is off by <= gamma_{C+2} |q_i| . |k_j| = e_ij; a
    softmax weight p_ij then by <= p_ij (e_ij + max_j e_ij) plus gamma_prob(N + 8) p_ij for the
    exponentials, running maxima and the normalising N-term sum (fused kernels rescale block by
    block); the weighted N-term sum of values adds gamma_prob(N + 8) sum_j p_ij |v_j|. So
    |d out_i| <= (2 max_j e_ij + 2 gamma_prob(N + 8)) sum_j p_ij |v_j|, all computed in float64."""
    qd, kd, vd = q.double(), k.double(), v.double()
    n = q.shape[2]
    p = torch.softmax(torch.bmm(qd.transpose(1, 2), kd), dim=-1)             # B x N x N
    e = gamma(q.shape[1] + 2) * torch.bmm(qd.abs().transpose(1, 2), kd.abs()).amax(-1)  # B x N
    size = torch.bmm(vd.abs(), p.transpose(1, 2))                            # B x C' x N
    return (2 * e[:, None, :] + 2 * gamma_prob(n + 8)) * size


def test_fast_attention_equals_reference():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 4, 60, generator=g), torch.randn(2, 4, 60, generator=g)
    v = torch.randn(2, 16, 60, generator=g)
    exact = attention_reference(q.double(), k.double(), v.double())
    for attention in (attention_fast, attention_reference):
        assert ((attention(q, k, v).double() - exact).abs() <= _attention_bound(q, k, v)).all()
    # reference semantics on a hand case: one key dominates -> every output is that value
    q1 = torch.ones(1, 1, 3)
    k1 = torch.tensor([[[0.0, 50.0, 0.0]]])
    v1 = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert torch.allclose(attention_reference(q1, k1, v1), torch.full((1, 1, 3), 2.0), atol=1e-6)
    attn = SelfAttention(16)
    with torch.no_grad():
        attn.gamma.fill_(0.5)
    x = torch.randn(1, 16, 6, 5)
    slow = SelfAttention(16, fast=False)
    slow.load_state_dict(attn.state_dict())
    with torch.no_grad():
        q, k, v = (conv(x).flatten(2) for conv in (attn.query_conv, attn.key_conv, attn.value_conv))
    # both take the same q, k, v; each attention is within the bound of the exact one (times
    # gamma = 0.5), and x + gamma * a rounds twice more
    with torch.no_grad():
        fast_out, slow_out = attn(x), slow(x)
    sizes = x.abs() + (fast_out - x).abs()  # |x| + |gamma a|
    bound = 2 * 0.5 * _attention_bound(q, k, v).view(1, 16, 6, 5) + gamma(3) * sizes.double()
    assert ((fast_out - slow_out).abs().double() <= bound).all()
    with torch.no_grad():
        attn.gamma.zero_()
    assert torch.equal(attn(x), x)  # gamma = 0 (its init) is the identity


@torch.no_grad()
def test_shape_range_and_coarse_stage(net):
    img, mask = _image_and_mask()
    out = net(img, mask)
    assert out.refined.shape == img.shape and out.coarse.shape == img.shape
    assert out.refined.abs().max() <= 1 and out.coarse.abs().max() <= 1
    white = torch.where(mask.bool(), torch.ones_like(img), img)  # holes filled with white
    coarse = net.coarse_net(torch.cat([white, mask], dim=1)).clamp(-1, 1)
    assert torch.allclose(out.coarse, coarse, atol=1e-6)
    black = torch.where(mask.bool(), -torch.ones_like(img), img)
    assert (net.coarse_net(torch.cat([black, mask], dim=1)).clamp(-1, 1) - coarse).abs().max() > 1e-2
    assert out.refined.std() > 1e-2


@torch.no_grad()
def test_output_ignores_pixels_inside_the_hole(net):
    img, mask = _image_and_mask(seed=3)
    other = torch.where(mask.bool(), -img, img)  # differs only inside the hole
    a, b = net(img, mask), net(other, mask)
    assert torch.equal(a.refined, b.refined) and torch.equal(a.coarse, b.coarse)
    outside = img.clone()
    outside[..., 0, 0] = -outside[..., 0, 0]
    assert not torch.equal(net(outside, mask).refined, a.refined)


@torch.no_grad()
def test_empty_and_full_masks_are_finite(net):
    img, mask = _image_and_mask(16, 16, seed=4)
    for m in (torch.zeros_like(mask), torch.ones_like(mask)):
        out = net(img, m)
        assert torch.isfinite(out.refined).all() and torch.isfinite(out.coarse).all()
    # all hole: nothing of the image may leak into the result
    full = torch.ones_like(mask)
    other = net(torch.rand_like(img) * 2 - 1, full)
    assert torch.equal(net(img, full).refined, other.refined)
    # no hole: the image is the input, so another image gives another result
    assert not torch.equal(net(img, torch.zeros_like(mask)).refined, net(img.flip(-1), torch.zeros_like(mask)).refined)


def test_training_init_and_batch_norm_in_train_mode():
    n = init_weights(InpaintSANet(cnum=8)).train()
    bn = n.coarse_net[0].batch_norm2d
    assert 0.9 < bn.weight.mean() < 1.1 and bn.weight.std() > 0 and torch.all(bn.bias == 0)
    img, mask = _image_and_mask(16, 16, seed=5)
    img, mask = img.repeat(2, 1, 1, 1), mask.repeat(2, 1, 1, 1)
    out = n(img, mask)
    out.refined.mean().backward()
    assert n.coarse_net[0].conv2d.weight.grad is not None
    assert int(bn.num_batches_tracked) == 1
