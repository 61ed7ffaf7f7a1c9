"""The stages a job runs, loaded once and reused by every job: body model, synthesizer, inpaintor.

`load_stages` is the one loader (the API's `Impersonator` holds its result); the methods here are the
per-source work every job shares: preparing a source, encoding it, and undoing a personalization.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from impersonator_cli.defaults import DEFAULT_SIZE, SIZES
from impersonator_cli.devices import Runtime, resolve_runtime
from impersonator_cli.errors import UsageError
from impersonator_cli.gan.load import load_generator, load_inpaintor
from impersonator_cli.pipeline.background import parse_background
from impersonator_cli.pipeline.rig import BodyModel, load_body_model
from impersonator_cli.pipeline.source import PreparedSource, SourceOptions, prepare_rgb, prepare_source
from impersonator_cli.pipeline.synth import LWBSynthesizer, WarpOnly
from impersonator_cli.render.backends import RENDERERS
from impersonator_cli.types import PathLike
from impersonator_cli.weights import store as weights
from impersonator_cli.weights.registry import DEFAULT_GENERATOR

Synthesizer = Union[WarpOnly, LWBSynthesizer]


@dataclass
class Stages:
    """Everything a job computes with, on one device at one output size (N x N)."""

    body: BodyModel
    synth: Synthesizer
    inpaintor: object | None  # DeepFillv2, or None: classical inpainting (noted in the results)
    runtime: Runtime
    size: int
    weights_dir: Path | None

    def prepare(self, source: Path, theta: np.ndarray | None = None,
                options: SourceOptions = SourceOptions(), role: str = "source photo") -> PreparedSource:
        """Per-source work on a photo (body, crop, maps, masks, background). theta: 85, frame convention;
        role: the photo's name in errors ('source photo', 'reference photo')."""
        return prepare_source(self.body, source, self.size, theta=theta, crop=options.crop,
                              background=parse_background(options.background), inpaintor=self.inpaintor,
                              bg_ks=options.bg_ks, ft_ks=options.ft_ks, role=role)

    def prepare_frame(self, rgb: np.ndarray, name: Path, theta: np.ndarray,
                      options: SourceOptions = SourceOptions()) -> PreparedSource:
        """The same per-source work on an RGB frame (H x W x 3 uint8) of a video, the whole frame cropped."""
        return prepare_rgb(self.body, rgb, name, self.size, theta=theta, crop="full",
                           background=parse_background(options.background), inpaintor=self.inpaintor,
                           bg_ks=options.bg_ks, ft_ks=options.ft_ks)

    def encode(self, sources: Sequence[PreparedSource]) -> list:
        """The generator's source-identity features of each source (None per source when warp-only)."""
        return [self.synth.encode(s.image, s.cond, s.masks.ft_mask) for s in sources]

    @contextlib.contextmanager
    def tuned(self, active: bool = True) -> Iterator[None]:
        """Restore the generator's weights when the block ends (a job's personalization stays in it).

        ``active=False`` (a job without personalization) neither copies nor reloads the weights, so
        the generator's prepared fast-kernel filters stay valid from one job to the next."""
        if not active or not isinstance(self.synth, LWBSynthesizer):
            yield
            return
        saved = {k: v.detach().clone() for k, v in self.synth.generator.state_dict().items()}
        try:
            yield
        finally:
            self.synth.generator.load_state_dict(saved)


def load_stages(weights_dir: PathLike | None = None, device: str = "auto", precision: str = "auto",
                generator: str = DEFAULT_GENERATOR, size: int = DEFAULT_SIZE, inpaint: bool = True,
                renderer: str = "auto") -> Stages:
    """Load the body model, the synthesizer (`generator`: a registry name, a checkpoint file, or "none"
    for the warp-only baseline) and, when its weights exist and `inpaint`, the DeepFillv2 inpaintor."""
    if size not in SIZES:
        raise UsageError(f"Unsupported output size {size}", hint="Use 256 (the trained size) or 512.")
    if renderer not in RENDERERS:
        raise UsageError(f"Unknown renderer '{renderer}'", hint=f"Use one of: {', '.join(RENDERERS)}.")
    folder = Path(weights_dir) if weights_dir is not None else None
    runtime = resolve_runtime(device, precision)
    body = load_body_model(folder, runtime.device, renderer)
    return Stages(body=body, synth=_load_synth(generator, folder, runtime),
                  inpaintor=_load_inpaintor(folder, runtime) if inpaint else None, runtime=runtime, size=size,
                  weights_dir=folder)


def _load_synth(generator: str, weights_dir: Path | None, runtime: Runtime) -> Synthesizer:
    if str(generator).lower() == "none":
        return WarpOnly()
    return LWBSynthesizer(load_generator(generator, weights_dir, runtime.device), runtime)


def _load_inpaintor(weights_dir: Path | None, runtime: Runtime):
    if weights.find("inpaintor_deepfillv2", weights_dir) is None:
        return None  # backgrounds fall back to classical inpainting, with a warning in results
    return load_inpaintor("inpaintor_deepfillv2", weights_dir, runtime.device)

