"""PatchGAN discriminators: official layout and the layer recipe of the method description."""

from __future__ import annotations

import json
from importlib import resources

import torch
import torch.nn.functional as F

from support.fp import network_tolerance
from impersonator_cli.gan.discriminator import GlobalLocalDiscriminator, PatchDiscriminator, crop_resize


def _manifest() -> dict:
    text = resources.files("impersonator_cli.weights").joinpath("official_state_dicts.json").read_text()
    return json.loads(text)


def _shapes(module: torch.nn.Module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_state_dicts_match_official_manifest():
    manifest = _manifest()
    with torch.device("meta"):
        d, gl = PatchDiscriminator(), GlobalLocalDiscriminator()
    assert _shapes(d) == manifest["discriminator"]
    assert _shapes(gl) == manifest["discriminator_global_local"]
    for name, m in (("discriminator", d), ("discriminator_global_local", gl)):
        assert sum(p.numel() for p in m.parameters()) == manifest["counts"][name]["num_parameters"]
        assert sum(b.numel() for b in m.buffers()) == 0


def _reference(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Table of the official layers: conv idx, stride, norm? (LeakyReLU 0.2 after all but the last)."""
    recipe = [(0, 2, False), (2, 2, True), (5, 2, True), (8, 2, True), (11, 1, True)]
    for idx, stride, norm in recipe:
        x = F.conv2d(x, sd[f"model.{idx}.weight"], sd[f"model.{idx}.bias"], stride=stride, padding=1)
        if norm:
            x = F.instance_norm(x, eps=1e-5)
        x = F.leaky_relu(x, 0.2)
    return F.conv2d(x, sd["model.14.weight"], sd["model.14.bias"], padding=1)


@torch.no_grad()
def test_patch_discriminator_equals_layer_recipe_and_output_size():
    torch.manual_seed(0)
    d = PatchDiscriminator(input_nc=6, ndf=8)
    x = torch.randn(2, 6, 64, 64)
    y = d(x)
    assert y.shape == (2, 1, 2, 2)
    ref = _reference({k: v.double() for k, v in d.state_dict().items()}, x.double())  # float64
    # float32 against float64: support/fp.py's error model over the layers run, at the output's scale
    tol = network_tolerance(d, lambda: d(x), scale=float(ref.abs().max()), runs=1)
    assert (y.double() - ref).abs().max() <= tol
    assert d(torch.randn(1, 6, 256, 256)).shape == (1, 1, 14, 14)


@torch.no_grad()
def test_global_local_concatenates_along_batch_and_crop_resize():
    torch.manual_seed(1)
    gl = GlobalLocalDiscriminator(ndf=8)
    g_in, l_in = torch.randn(2, 4, 64, 64), torch.randn(2, 6, 64, 64)
    out = gl(g_in, l_in)
    assert out.shape == (4, 1, 2, 2)
    assert torch.equal(out[:2], gl.global_model(g_in)) and torch.equal(out[2:], gl.local_model(l_in))
    img = torch.randn(2, 3, 16, 16)
    same = crop_resize(img, torch.tensor([[0, 0, 16, 16], [0, 0, 16, 16]]), (16, 16))
    assert torch.allclose(same, img, atol=1e-6)
    crop = crop_resize(img, torch.tensor([[2, 3, 10, 7], [0, 0, 4, 4]]), (9, 9))
    # align_corners=True keeps the crop's corner pixels exactly at the output corners
    assert torch.allclose(crop[0, :, 0, 0], img[0, :, 3, 2]) and torch.allclose(crop[0, :, -1, -1], img[0, :, 6, 9])
    assert torch.allclose(crop[1, :, -1, -1], img[1, :, 3, 3])
