"""HMR: strict loading of an official-format checkpoint and the exact function it computes.

The checkpoint is synthetic (random values, official keys/shapes from the manifest); θ is compared
with an independent functional re-computation written here from the spec (§1.2-§1.3).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from importlib import resources

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from impersonator_cli.body.arrays import SMPLArrays
from impersonator_cli.body.hmr import HMR, load_hmr, preprocess, smpl_arrays_from_hmr, split_theta
from impersonator_cli.errors import WeightsError
from support.fp import network_tolerance

MANIFEST = json.loads(
    resources.files("impersonator_cli.weights").joinpath("official_state_dicts.json").read_text()
)


def fake_official_state_dict(seed: int = 0) -> OrderedDict:
    """Random tensors with the manifest's keys and shapes, scaled so activations stay moderate."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in MANIFEST["hmr"].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight", "post_bn.weight")):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 4 or ".fc" in key and key.endswith("weight"):
            fan_in = math.prod(shape[1:])
            gain = 0.5 if ("conv3" in key or "shortcut" in key) else 1.0
            state[key] = torch.randn(shape, generator=g) * gain * math.sqrt(2.0 / fan_in)
        elif key == "regressor.mean_theta":
            theta = torch.zeros(85)
            theta[0], theta[3] = 0.9, math.pi
            theta[6:75] = 0.1 * torch.randn(69, generator=g)
            state[key] = theta
        else:  # biases, running means, SMPL arrays
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(path, state dict) of an `hmr_tf2pt.pth` in the legacy (torch 1.2) serialization format."""
    state = fake_official_state_dict()
    path = tmp_path_factory.mktemp("hmr") / "hmr_tf2pt.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path, state


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 224, 224, generator=g) * 2 - 1


# ---------------------------------------------------------------- independent reference


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=1e-5)


def _block(x, sd, p, stride):
    pre = F.relu(_bn(x, sd, f"{p}.bn1"))
    if f"{p}.shortcut.0.weight" in sd:
        skip = F.conv2d(pre, sd[f"{p}.shortcut.0.weight"], sd[f"{p}.shortcut.0.bias"], stride=stride)
    else:
        skip = x[:, :, ::stride, ::stride]
    y = F.conv2d(pre, sd[f"{p}.conv1.weight"])
    y = F.conv2d(F.relu(_bn(y, sd, f"{p}.bn2")), sd[f"{p}.conv2.weight"], stride=stride, padding=1)
    y = F.conv2d(F.relu(_bn(y, sd, f"{p}.bn3")), sd[f"{p}.conv3.weight"], sd[f"{p}.conv3.bias"])
    return y + skip


def reference_theta(sd, x, stride_on_last_block=True):
    """θ computed straight from the state-dict tensors following the spec."""
    y = F.conv2d(x, sd["resnet.conv1.weight"], sd["resnet.conv1.bias"], stride=2, padding=3)
    y = F.max_pool2d(y, 3, 2, padding=0, ceil_mode=True)
    for stage, (depth, stride) in enumerate(zip((3, 4, 6, 3), (2, 2, 2, 1)), 1):
        for i in range(depth):
            at = depth - 1 if stride_on_last_block else 0
            y = _block(y, sd, f"resnet.layer{stage}.{i}", stride if i == at else 1)
    feature = F.relu(_bn(y, sd, "resnet.post_bn")).mean(dim=(2, 3))
    theta = sd["regressor.mean_theta"].expand(x.shape[0], -1)
    fc = "regressor.fc_blocks"
    for _ in range(3):
        h = F.relu(F.linear(torch.cat([feature, theta], 1), sd[f"{fc}.fc1.weight"], sd[f"{fc}.fc1.bias"]))
        h = F.relu(F.linear(h, sd[f"{fc}.fc2.weight"], sd[f"{fc}.fc2.bias"]))
        theta = theta + F.linear(h, sd[f"{fc}.fc3.weight"], sd[f"{fc}.fc3.bias"])
    return theta


# ---------------------------------------------------------------- tests

# (channels, spatial size) at each stage boundary for a 224 input (spec §1.2)
EXPECTED_SIZES = {"conv1_in": (3, 224), "conv1_out": (64, 112), "layer1_in": (64, 56),
                  "layer1_out": (256, 28), "layer2_out": (512, 14), "layer3_out": (1024, 7),
                  "layer4_out": (2048, 7)}


def record_sizes(resnet) -> dict:
    """Hook the stem and the four stages; the dict fills with shapes on the first forward."""
    sizes = {}

    def record(key, tensor):
        sizes.setdefault(key, tuple(tensor.shape))

    for name in ["conv1", "layer1", "layer2", "layer3", "layer4"]:
        module = getattr(resnet, name)
        if name in ("conv1", "layer1"):
            module.register_forward_pre_hook(lambda m, a, n=name: record(f"{n}_in", a[0]))
        module.register_forward_hook(lambda m, a, o, n=name: record(f"{n}_out", o))
    return sizes



def test_state_dict_matches_manifest_exactly():
    model = HMR()
    sd = model.state_dict()
    assert list(sd) == list(MANIFEST["hmr"])
    assert {k: list(v.shape) for k, v in sd.items()} == MANIFEST["hmr"]
    for name, module in [("hmr", model), ("hmr.resnet", model.resnet),
                         ("hmr.regressor", model.regressor), ("hmr.smpl", model.smpl)]:
        counts = MANIFEST["counts"][name]
        assert sum(p.numel() for p in module.parameters()) == counts["num_parameters"], name
        assert sum(b.numel() for b in module.buffers()) == counts["num_buffer_elements"], name
        assert len(module.state_dict()) == counts["num_state_dict_entries"], name


def test_loaded_theta_equals_independent_reference(official, images):
    path, state = official
    model = load_hmr(path)
    assert not model.training
    sizes = record_sizes(model.resnet)
    state64 = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    with torch.no_grad():
        theta = model(images)
        again = model(images)
        expected = reference_theta(state64, images.double())  # float64: exact to ~1e-16
        wrong_strides = reference_theta(state64, images[:1].double(), stride_on_last_block=False)
    assert sizes == {k: (2, c, v, v) for k, (c, v) in EXPECTED_SIZES.items()}
    assert theta.shape == (2, 85) and torch.isfinite(theta).all()
    assert torch.equal(theta, again)
    scale = float(expected.abs().max())
    # float32 against float64: support/fp.py's error model over every layer call (~1e-3 of the scale)
    tol = network_tolerance(model, lambda: model(images), scale=scale, runs=1)
    assert (theta.double() - expected).abs().max() <= tol
    assert (theta - state["regressor.mean_theta"]).abs().max() > 10 * tol  # the net did something
    assert (wrong_strides - expected[:1]).abs().max() > 10 * tol  # the reference catches stride slips
    assert (theta[0] - theta[1]).abs().max() > 10 * tol  # batch items are independent


def test_safetensors_form_and_absent_num_batches_tracked(official, tmp_path):
    from safetensors.torch import save_file

    _, state = official
    converted = {k: v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    st_path = tmp_path / "hmr.safetensors"
    save_file(converted, str(st_path))
    for source in (st_path, converted):
        loaded = load_hmr(source).state_dict()
        assert list(loaded) == list(state)
        for key, value in loaded.items():
            if key.endswith("num_batches_tracked"):
                assert int(value) == 0  # absent entries are filled; eval ignores them
            else:
                assert torch.equal(value, state[key]), key


def test_wrong_shape_names_file_key_and_shapes(tmp_path):
    path = tmp_path / "hmr_tf2pt.pth"
    torch.save({"resnet.conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(WeightsError) as info:
        load_hmr(path)
    text = str(info.value)
    assert str(path) in text and "resnet.conv1.weight" in text
    assert "[64, 3, 7, 7]" in text and "[64, 3, 3, 3]" in text


def test_unexpected_and_missing_keys_are_named(official, tmp_path):
    _, state = official
    path = tmp_path / "extra.pth"
    torch.save({"module.resnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(WeightsError, match="module.resnet.conv1.weight") as info:
        load_hmr(path)
    assert str(path) in str(info.value)

    missing = OrderedDict((k, v) for k, v in state.items() if k != "smpl.posedirs")
    path = tmp_path / "missing.pth"
    torch.save(missing, path)
    with pytest.raises(WeightsError, match="smpl.posedirs") as info:
        load_hmr(path)
    assert str(path) in str(info.value)


def test_unreadable_files_raise_weights_error(tmp_path):
    bad = tmp_path / "hmr_tf2pt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="hmr_tf2pt.pth"):
        load_hmr(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        load_hmr(tmp_path / "nothing.pth")
    torch.save([torch.zeros(1)], bad)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_hmr(bad)


def test_split_theta_layout():
    theta = torch.arange(2 * 85, dtype=torch.float32).reshape(2, 85)
    parts = split_theta(theta)
    assert parts.cam.tolist() == [[0, 1, 2], [85, 86, 87]]
    assert parts.pose[:, 0].tolist() == [3, 88] and parts.pose[:, -1].tolist() == [74, 159]
    assert parts.shape[:, 0].tolist() == [75, 160] and parts.shape.shape == (2, 10)
    assert torch.equal(parts.theta, theta)


@pytest.mark.parametrize("height,width", [(100, 100), (500, 500), (300, 180), (224, 224)])
def test_preprocess_matches_cv2_resize(height, width):
    rng = np.random.default_rng(height + width)
    base = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    image = np.clip(cv2.resize(base, (width, height)) + rng.normal(0, 20, (height, width, 3)), 0, 255)
    image = image.astype(np.uint8)
    official = cv2.resize(image, (224, 224)).astype(np.float32) / 255 * 2 - 1
    ours = preprocess(image)[0].permute(1, 2, 0).numpy()
    grey = 2 / 255
    # cv2 computes uint8 INTER_LINEAR in fixed point (11-bit weights): ~13% of values land 1 grey
    # level away from the correctly rounded bilinear value; never more.
    assert np.abs(ours - official).max() <= grey + 1e-6
    assert np.abs(ours - official).mean() <= 0.2 * grey
    batch = preprocess(np.stack([image, image[::-1]]))
    assert batch.shape == (2, 3, 224, 224) and torch.equal(batch[0], preprocess(image)[0])
    assert float(preprocess(np.full((8, 8, 3), 255, np.uint8)).min()) == 1.0


def test_smpl_arrays_round_trip_through_checkpoint_layout(official):
    _, state = official
    faces = np.arange(30).reshape(10, 3)
    arrays = smpl_arrays_from_hmr(state, faces)
    assert isinstance(arrays, SMPLArrays)
    assert arrays.shapedirs.shape == (6890, 3, 10) and arrays.posedirs.shape == (6890, 3, 207)
    assert arrays.J_regressor.shape == (24, 6890) and arrays.cocoplus_regressor.shape == (19, 6890)
    # a vertex's shape direction lands where the checkpoint's (10, 20670) layout puts it
    assert np.isclose(arrays.shapedirs[5, 2, 7], float(state["smpl.shapedirs"][7, 5 * 3 + 2]))
    for name, value in arrays.hmr_buffers().items():
        np.testing.assert_array_equal(value, state[f"smpl.{name}"].numpy())
    model = HMR(arrays)
    assert torch.equal(model.smpl.posedirs, state["smpl.posedirs"])
