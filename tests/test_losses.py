"""Loss networks (VGG-19, SphereFace-20a) and the loss functions, against independent references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from impersonator_cli.weights.checkpoints import expected_shapes, save_safetensors
from support.fp import gamma_prob, network_tolerance
from impersonator_cli.gan.losses import (
    FaceLoss, PerceptualLoss, Sphere20a, VGG19Features, crop_heads, head_boxes, load_sphereface, load_vgg19,
    lsgan_d_loss, lsgan_g_loss, mask_loss, tv_loss,
)

# torchvision vgg19().features: conv indices (each followed by a ReLU) and max-pool indices.
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
VGG_POOLS = (4, 9, 18, 27, 36)
TAPS = (1, 6, 11, 20, 29)  # ReLU after conv1_1, conv2_1, conv3_1, conv4_1, conv5_1


def _random_vgg_features(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {k: s for k, s in expected_shapes("vgg19").items() if k.startswith("features.")}
    return {k: torch.randn(s, generator=g) * (0.05 if k.endswith("weight") else 0.01) for k, s in shapes.items()}


def _manual_vgg(sd, x):
    """Walk the torchvision index layout by hand; return the activations at TAPS."""
    outs = []
    for i in range(TAPS[-1] + 1):
        if i in VGG_CONVS:
            x = F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)
        elif i in VGG_POOLS:
            x = F.max_pool2d(x, 2, 2)
        else:
            x = F.relu(x)
        if i in TAPS:
            outs.append(x)
    return outs


@pytest.fixture(scope="module")
def vgg():
    sd = _random_vgg_features()
    net = VGG19Features()
    net.load_state_dict(sd, strict=True)
    return net, sd


def test_vgg_keys_are_torchvision_features(vgg):
    net, _ = vgg
    expected = {k: s for k, s in expected_shapes("vgg19").items() if k.startswith("features.")}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training  # a loss network stays in eval mode


def _sd64(sd):
    return {k: v.double() for k, v in sd.items()}


def test_vgg_slices_match_a_manual_forward(vgg):
    net, sd = vgg
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    got, ref = net(x), _manual_vgg(_sd64(sd), x.double())  # the reference in float64
    assert [tuple(t.shape[1:]) for t in got] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    for a, b in zip(got, ref):  # support/fp.py's float32 error model at each tap's scale
        tol = network_tolerance(net, lambda: net(x), scale=float(b.abs().max()), runs=1)
        assert (a.double() - b).abs().max() <= tol


def test_perceptual_loss_weights_and_zero(vgg):
    net, sd = vgg
    loss = PerceptualLoss(net)
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) == 0.0
    weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    fx, fy = _manual_vgg(_sd64(sd), x.double()), _manual_vgg(_sd64(sd), y.double())
    expected = sum(w * (a - b).abs().mean() for w, a, b in zip(weights, fx, fy))
    # each tap of x and of y within its error-model tolerance (see above), then a mean of n terms
    taps = [network_tolerance(net, lambda: net(x), scale=float(max(a.abs().max(), b.abs().max())), runs=1)
            for a, b in zip(fx, fy)]
    bound = sum(w * 2 * t for w, t in zip(weights, taps)) + gamma_prob(64 * 32 * 32 + 8) * float(expected)
    assert abs(float(loss(x, y)) - float(expected)) <= bound
    # No ImageNet normalisation: the first tap is exactly relu(conv(x)) of the raw [-1, 1] input.
    assert torch.equal(net(x)[0], F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], padding=1)))


def test_load_vgg19_strict_from_converted_file(tmp_path, vgg):
    _, sd = vgg
    path = save_safetensors(sd, tmp_path / "vgg19", {})
    net = load_vgg19(path)
    assert not net.training
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())


def test_sphereface_keys_shapes_and_outputs_match_the_manifest():
    with torch.device("meta"):
        net = Sphere20a()
        outs = net(torch.empty(2, 3, 112, 96))
    expected = expected_shapes("face_sphere20a")
    sd = net.state_dict()
    assert list(sd) == list(expected)  # same names in the same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert sum(p.numel() for p in net.parameters()) == 22_670_656
    assert [tuple(o.shape) for o in outs] == [(2, 64, 56, 48), (2, 128, 28, 24), (2, 256, 14, 12),
                                               (2, 512, 7, 6), (2, 512)]


def test_load_sphereface_from_official_pth_drops_fc6(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in expected_shapes("face_sphere20a").items()}
    official = {"module." + k: v for k, v in sd.items()}
    official["module.fc6.weight"] = torch.zeros(10, 512)  # the classifier the file also holds
    torch.save(official, tmp_path / "sphere20a_20171020.pth")
    net = load_sphereface(tmp_path / "sphere20a_20171020.pth")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())
    assert not any(p.requires_grad for p in net.parameters())


def test_sphereface_residual_units_by_hand():
    torch.manual_seed(0)
    net = Sphere20a(widths=(4, 8, 8, 8))
    x = torch.randn(1, 3, 112, 96)

    def layer(name, t):  # in float64
        conv, prelu = getattr(net, f"conv{name}"), getattr(net, f"relu{name}")
        t = F.conv2d(t, conv.weight.double(), conv.bias.double(), stride=conv.stride, padding=1)
        return torch.where(t > 0, t, prelu.weight.double().view(1, -1, 1, 1) * t)

    t = layer("1_1", x.double())
    t = t + layer("1_3", layer("1_2", t))
    t = layer("2_1", t)
    t = t + layer("2_3", layer("2_2", t))
    t = t + layer("2_5", layer("2_4", t))
    outs = net(x)
    assert net.conv1_1.stride == (2, 2) and net.conv1_2.stride == (1, 1)
    tol = network_tolerance(net, lambda: net(x), scale=float(t.detach().abs().max()), runs=1)  # support/fp.py
    assert (outs[1].double() - t).abs().max() <= tol


def _joints(head_xy, rest=(0.9, 0.9)):
    j = torch.tensor(rest).repeat(1, 19, 1)
    j[0, 12:19] = torch.tensor(head_xy)
    return j


def test_head_box_rule():
    # head joints x in [-0.5, -0.12], y in [-0.9, -0.5] -> (0..1): x [0.25, 0.44], y [0.05, 0.25]
    xs, ys = [-0.5, -0.3, -0.12, -0.2, -0.4, -0.35, -0.25], [-0.9, -0.5, -0.7, -0.8, -0.6, -0.55, -0.65]
    box = head_boxes(_joints(list(zip(xs, ys))), 64)
    # x0 = (0.25 - 0.05) 64 = 12.8 -> 12; y0 = (0.05 - 0.05) 64 = 0; x1 = 0.49 * 64 = 31.36 -> 31; y1 = 0.25 * 64 = 16
    assert box.tolist() == [[12, 0, 31, 16]]
    # out-of-frame joints are clipped to the image; joints 0..11 never count
    far = _joints([[1.5, -1.5]] * 6 + [[0.8, -1.2]])
    assert head_boxes(far, 100).tolist() == [[85, 0, 100, 0]]


def test_face_loss_uses_the_same_box_for_both_images():
    torch.manual_seed(0)
    face = FaceLoss(Sphere20a(widths=(4, 8, 8, 8)))
    j2d = _joints([[-0.5, -0.9], [-0.12, -0.5]] + [[-0.3, -0.7]] * 5).expand(2, -1, -1)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    assert float(face(x, x, j2d)) == 0.0
    outside = y.clone()
    outside[..., 40:, :] = 0.3  # below the head box (y1 = 16)
    assert torch.allclose(face(x, y, j2d), face(x, outside, j2d))
    inside = y.clone()
    inside[..., 2:10, 15:30] = 0.3
    assert not torch.allclose(face(x, y, j2d), face(x, inside, j2d))
    crops = crop_heads(x, head_boxes(j2d, 64))
    ref = F.interpolate(x[:, :, 0:16, 12:31], size=(112, 96), mode="bilinear", align_corners=True)
    assert torch.allclose(crops, ref)


def test_lsgan_values():
    assert float(lsgan_d_loss(torch.ones(2, 1, 3, 3), -torch.ones(2, 1, 3, 3))) == 0.0
    # real [0, 2]: mean((r-1)^2) = 1; fake [0]: mean((f+1)^2) = 1
    assert float(lsgan_d_loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0]))) == pytest.approx(2.0)
    assert float(lsgan_g_loss(torch.tensor([1.0, -3.0]))) == pytest.approx(5.0)


def test_tv_and_mask_losses():
    A = torch.tensor([[[[0.0, 1.0], [3.0, 3.0]]]])
    # dx: |1-0|, |3-3| -> 0.5; dy: |3-0|, |3-1| -> 2.5
    assert float(tv_loss(A)) == pytest.approx(3.0)
    a, t = torch.full((1, 1, 2, 2), 0.5), torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    assert float(mask_loss(a, t)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(mask_loss(a, t, bce=False)) == pytest.approx(0.25)
    b = torch.tensor([[[[0.2, 0.9], [0.6, 0.99]]]])
    bce = -(torch.log(torch.tensor([0.8, 0.9, 0.6, 0.99]))).mean()
    assert torch.allclose(mask_loss(b, t), bce)
