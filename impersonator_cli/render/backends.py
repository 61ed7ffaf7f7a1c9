"""Rasterizer backends: our vectorised PyTorch rasterizer, or the official patched neural_renderer.

`--renderer auto` uses neural_renderer when it imports and exposes the official face-index /
weight-map kernel on a CUDA device (the official code path, for bit-level comparisons), and the
PyTorch rasterizer everywhere else. Both take y-down f2verts (B x F x 3 x 3) and return a Raster.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import Tensor

from impersonator_cli.errors import EnvironmentProblem, UsageError
from impersonator_cli.render.rasterize import EYE_DISTANCE, Raster, rasterize

RENDERERS = ("auto", "torch", "nmr")
Rasterizer = Callable[[Tensor, int], Raster]
_KERNEL = "rasterize_face_index_map_and_weight_map"


def _neural_renderer():
    try:
        module = importlib.import_module("neural_renderer")
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return module if hasattr(module, _KERNEL) else None


def nmr_available() -> bool:
    """True when the official patched neural_renderer (with its face-index kernel) imports."""
    return _neural_renderer() is not None


def rasterize_nmr(f2verts: Tensor, size: int) -> Raster:
    """The official kernel (spec §2.2-2.3): Y negated for its bottom-up raster, z shifted by the
    look_at eye distance; it returns maps already flipped to the y-down frame."""
    nr = _neural_renderer()
    faces = f2verts.detach().clone().float()
    faces[..., 1] = -faces[..., 1]
    faces[..., 2] = faces[..., 2] + EYE_DISTANCE
    fim, wim = getattr(nr, _KERNEL)(faces.contiguous(), size, False)
    return Raster(face_index=fim.long(), weights=wim.float())


def select_rasterizer(name: str, device: torch.device) -> Rasterizer:
    """'torch', 'nmr' (error when missing) or 'auto' (nmr on CUDA when it imports, else torch)."""
    name = (name or "auto").lower()
    if name not in RENDERERS:
        raise UsageError(f"Unknown renderer '{name}'", hint=f"Use one of: {', '.join(RENDERERS)}.")
    if name == "torch" or (name == "auto" and not (device.type == "cuda" and nmr_available())):
        return rasterize
    if not nmr_available():
        raise EnvironmentProblem(
            "--renderer nmr needs the official patched neural_renderer (with its face-index kernel)",
            hint="Build it from the official repository's thirdparty/neural_renderer, or use --renderer torch.")
    if device.type != "cuda":
        raise EnvironmentProblem("neural_renderer runs only on CUDA devices", hint="Use --renderer torch on this device.")
    return rasterize_nmr
