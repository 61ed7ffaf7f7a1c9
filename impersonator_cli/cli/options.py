"""Typer options declared once as `Annotated` aliases and reused by every command.

Flag names equal the Python API's keyword names (`--weights-dir` -> `weights_dir`).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from impersonator_cli.defaults import BG_KS, DEFAULT_SIZE, FT_KS
from impersonator_cli.weights.registry import DEFAULT_GENERATOR

DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto | cpu | cuda | cuda:N | mps. auto picks CUDA when available.",
        envvar="IMPERSONATE_DEVICE",
        rich_help_panel="Runtime",
    ),
]
WeightsDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--weights-dir",
        help="Folder with the weights (default: $IMPERSONATE_WEIGHTS_DIR, ./weights, then the Hugging Face cache).",
        rich_help_panel="Runtime",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path,
    typer.Option("--output", "-o", help="Output file.", rich_help_panel="Output"),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace the output if it exists.", rich_help_panel="Output"),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print a machine-readable JSON summary on stdout.", rich_help_panel="Output"),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.", rich_help_panel="Output"),
]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto | fp32 | fp16 | bf16 (auto: fp16 on CUDA, fp32 on CPU).", rich_help_panel="Runtime")]
GeneratorOpt = Annotated[str, typer.Option("--generator", help="Generator weights: a registry name, a file, or 'none' (warp-only, no GAN weights).", rich_help_panel="Model")]
SizeOpt = Annotated[int, typer.Option("--size", help="Output size in pixels (square person-centred crop): 256 or 512.", rich_help_panel="Output")]
BackgroundOpt = Annotated[str, typer.Option("--background", help="inpaint | source | black | white | gray | green | #RRGGBB.", rich_help_panel="Model")]
FrontWarpOpt = Annotated[bool, typer.Option("--front-warp", help="Copy the warped source face onto the visible front face (official option).", rich_help_panel="Model")]
CropOpt = Annotated[str, typer.Option("--crop", help="person: square crop around the person; full: the whole image padded to a square.", rich_help_panel="Model")]
BgKsOpt = Annotated[int, typer.Option("--bg-ks", help="Dilation (px) of the body mask for background inpainting.", rich_help_panel="Model")]
FtKsOpt = Annotated[int, typer.Option("--ft-ks", help="Dilation (px) of the source crop mask.", rich_help_panel="Model")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Frames per batch.", rich_help_panel="Runtime")]
PersonalizeOpt = Annotated[bool, typer.Option("--personalize", help="Fine-tune the generator on the source first (the official post-tune; slow on a CPU). Cached per source.", rich_help_panel="Personalization")]
TuneStepsOpt = Annotated[Optional[int], typer.Option("--personalize-steps", help="At most this many fine-tuning steps (default: the official schedule: imitate/novelview 5 epochs over 8 pairs, swap 50 steps).", rich_help_panel="Personalization")]
TuneSecondsOpt = Annotated[Optional[float], typer.Option("--personalize-seconds", help="At most this many seconds of fine-tuning.", rich_help_panel="Personalization")]
RendererOpt = Annotated[str, typer.Option("--renderer", help="auto | torch | nmr (the official neural_renderer, CUDA only; auto uses it when installed).", rich_help_panel="Runtime")]
CrfOpt = Annotated[int, typer.Option("--crf", help="H.264 quality (0 best .. 51 worst).", rich_help_panel="Output")]


# ------------------------------------------------------------------ option groups shared by commands


@dataclasses.dataclass(frozen=True)
class JobArgs:
    """Every option the three jobs (imitate, swap, novelview) share: the generator, the output size and
    how sources are prepared; personalization; where the networks run; how the command reports."""

    size: SizeOpt = DEFAULT_SIZE
    generator: GeneratorOpt = DEFAULT_GENERATOR
    background: BackgroundOpt = "inpaint"
    front_warp: FrontWarpOpt = False
    crop: CropOpt = "person"
    bg_ks: BgKsOpt = BG_KS
    ft_ks: FtKsOpt = FT_KS
    personalize: PersonalizeOpt = False
    personalize_steps: TuneStepsOpt = None
    personalize_seconds: TuneSecondsOpt = None
    device: DeviceOpt = "auto"
    precision: PrecisionOpt = "auto"
    renderer: RendererOpt = "auto"
    weights_dir: WeightsDirOpt = None
    overwrite: OverwriteOpt = False
    json_out: JsonOpt = False
    quiet: QuietOpt = False


def with_groups(**groups: type) -> Callable:
    """Give a command the options of each group (a dataclass above), received as one object per keyword.

    `@with_groups(args=JobArgs)` on `def cmd(x: XOpt, args: JobArgs)` makes Typer see `cmd(x, size,
    generator, ...)` and call it with `args=JobArgs(size=..., generator=..., ...)`."""
    def decorate(func: Callable) -> Callable:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(func).parameters.values()
               if p.name not in groups]
        fields = {key: _group_parameters(cls) for key, cls in groups.items()}

        def command(**kwargs):
            packed = {key: cls(**{p.name: kwargs.pop(p.name) for p in fields[key]}) for key, cls in groups.items()}
            return func(**kwargs, **packed)

        params = own + [p for group in fields.values() for p in group]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__, command.__module__ = func.__name__, func.__doc__, func.__module__
        return command
    return decorate


def _group_parameters(cls: type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
            for f in dataclasses.fields(cls)]
