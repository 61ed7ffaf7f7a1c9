"""One `load_*` per network: a registry name or a path in, a ready model in eval mode out.

Converted weights (safetensors + JSON config, written by `impersonate weights import`) carry their
architecture settings, so small-width networks (tests, training experiments) load through the same
path as the official ones. An official `.pth` path is accepted too (read with weights_only=True).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from impersonator_cli.weights import registry
from impersonator_cli.weights import store as weights
from impersonator_cli.weights.checkpoints import load_config, load_converted, load_official_state_dict
from impersonator_cli.devices import fast_cpu_kernels
from impersonator_cli.errors import WeightsError
from impersonator_cli.gan.generator import LiquidWarpingGenerator
from impersonator_cli.gan.inpaintor import InpaintSANet


def _state_and_config(name_or_path: str | Path, section: str, weights_dir) -> tuple[Mapping, dict, str]:
    if isinstance(name_or_path, str) and name_or_path in registry.NAMES:
        path = weights.resolve(name_or_path, weights_dir)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise WeightsError("The weights file does not exist", path=path,
                               hint="Check the path, or use a name from `impersonate weights list`.")
    if path.suffix == ".safetensors":
        return load_converted(path), load_config(path), str(path)
    return load_official_state_dict(path, section), {}, str(path)


def _build(factory: Callable[[], nn.Module], state: Mapping, source: str, device) -> nn.Module:
    with torch.device("meta"):
        model = factory()
    model = model.to_empty(device=device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError("The weights do not fit the network their config describes", path=source,
                           hint="Import the weights again (`impersonate weights import ...`).",
                           detail=str(exc)[:2000]) from exc
    return model.eval()


def load_generator(name_or_path: str | Path = registry.DEFAULT_GENERATOR, weights_dir=None,
                   device: torch.device | str = "cpu", bg_stream: bool = False) -> LiquidWarpingGenerator:
    """The LWB generator. bg_stream=False skips the BG stream (inference uses the DeepFill inpaintor).

    ``IMPERSONATE_CPU_KERNELS=reference`` turns its fast CPU kernels off (PyTorch's own throughout)."""
    state, config, source = _state_and_config(name_or_path, "generator", weights_dir)
    conv_dim, repeat_num = int(config.get("conv_dim", 64)), int(config.get("repeat_num", 6))
    if not bg_stream:
        state = {k: v for k, v in state.items() if not k.startswith("bg_model.")}
    model = _build(lambda: LiquidWarpingGenerator(conv_dim=conv_dim, repeat_num=repeat_num, bg_stream=bg_stream),
                   state, source, device)
    model.fast_cpu = fast_cpu_kernels()
    return model


def load_inpaintor(name_or_path: str | Path = "inpaintor_deepfillv2", weights_dir=None,
                   device: torch.device | str = "cpu") -> InpaintSANet:
    """The DeepFillv2-style background inpaintor (eval mode: BatchNorm uses running statistics)."""
    state, config, source = _state_and_config(name_or_path, "bg_inpaintor_deepfillv2", weights_dir)
    cnum = int(config.get("cnum", 32))
    return _build(lambda: InpaintSANet(c_dim=4, cnum=cnum), state, source, device)
