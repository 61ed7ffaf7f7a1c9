"""Inputs for end-to-end tests: the demo's mannequin world plus networks in the official formats.

Built once per test session by the `demo_world` fixture (tests/conftest.py); tests only read it.

- `hmr.safetensors`: the official HMR layout with the mannequin's SMPL arrays and a regressor whose
  last layer is zero, so every crop yields mean_theta: a standing person filling the crop. HMR with
  random weights otherwise "sees" nonsense; this keeps the recovered motion plausible and exact.
- `small_generator.safetensors`: a randomly initialised LWB generator at small width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from impersonator_cli.body.hmr import HMR
from impersonator_cli.demo.mannequin import mannequin_arrays
from impersonator_cli.weights.checkpoints import save_safetensors
from impersonator_cli.demo.world import DemoFiles, a_pose, build_demo
from impersonator_cli.gan.blocks import init_weights
from impersonator_cli.gan.generator import LiquidWarpingGenerator

FRAMES = 8


@dataclass(frozen=True)
class World:
    files: DemoFiles
    folder: Path
    small_generator: Path


def standing_theta() -> torch.Tensor:
    theta = torch.zeros(85)
    theta[:3] = torch.tensor([0.85, 0.0, 0.25])
    theta[3:75] = torch.from_numpy(a_pose(50)).float()
    return theta


def write_sane_hmr(weights_dir: Path) -> Path:
    torch.manual_seed(0)
    model = HMR(mannequin_arrays())
    with torch.no_grad():
        model.regressor.fc_blocks.fc3.weight.zero_()
        model.regressor.fc_blocks.fc3.bias.zero_()
        model.regressor.mean_theta.copy_(standing_theta())
    config = {"arch": "HumanModelRecovery", "image_size": 224, "iterations": 3, "section": "hmr"}
    return save_safetensors(model.state_dict(), weights_dir / "hmr.safetensors", config)


def write_small_generator(path: Path) -> Path:
    torch.manual_seed(1)
    net = LiquidWarpingGenerator(conv_dim=8, repeat_num=2)
    init_weights(net)
    config = {"arch": "ImpersonatorGenerator", "conv_dim": 8, "repeat_num": 2}
    return save_safetensors(net.state_dict(), path, config)


def build_world(folder: Path) -> World:
    files = build_demo(folder, frames=FRAMES)
    write_sane_hmr(files.weights_dir)
    return World(files=files, folder=folder, small_generator=write_small_generator(folder / "small_generator.safetensors"))
