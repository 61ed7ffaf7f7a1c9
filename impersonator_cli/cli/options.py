"""Typer options declared once as `Annotated` aliases and reused by every command.

Flag names equal the Python API's keyword names (`--weights-dir` -> `weights_dir`). An option whose
values are a fixed set shows them as its metavar, `choices(...)` -> `[a|b]`; the value stays a plain
str/int that the API validates (a wrong one is a one-paragraph usage error naming the valid values).
Help shows no value type after a flag (`_help_types`, installed once below).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from impersonator_cli.defaults import BG_KS, DEFAULT_SIZE, FT_KS, SIZES
from impersonator_cli.weights.registry import DEFAULT_GENERATOR

# Fixed value sets, as the API defines them (kept light: the CLI starts without torch; tests/test_help_doctor.py
# checks that each equals the API's own tuple).
CAMERAS = ("smooth", "source", "copy")  # body.camera.CAMERA_STRATEGIES
LAYOUTS = ("result", "side-by-side")  # jobs.imitate.LAYOUTS
FRAMES = ("crop", "source")  # jobs.imitate.FRAMES
CROPS = ("person", "full")  # pipeline.source.CROPS
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # "auto" + devices.PRECISIONS
RENDERERS = ("auto", "torch", "nmr")  # render.backends.RENDERERS
PART_GROUPS = ("all", "body", "head", "upper", "lower")  # render.flow.PART_GROUPS
PART_NAMES = ("head", "torso", "left_leg", "right_leg", "left_arm", "right_arm", "left_foot", "right_foot",
              "left_hand", "right_hand")  # the official smpl_part_info.json, without the "NN_" order prefix


def choices(values: tuple) -> str:
    """The help metavar of an option with a fixed set of values: `[a|b]`."""
    return "[" + "|".join(str(v) for v in values) + "]"


def _help_types() -> None:
    """Typer's rich help prints a value type after every option, `<bool>` after a flag too: here a flag
    shows none. Older Typer releases (click types) already show none and need no change."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_impersonate", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None
        return shown(self, ctx)

    display_type_rich._impersonate = True
    option.display_type_rich = display_type_rich


_help_types()

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
        help="Folder with the weights. Default: $IMPERSONATE_WEIGHTS_DIR, else ./weights if it holds a manifest.json, "
             "else the per-user folder ~/.local/share/impersonate/weights ($XDG_DATA_HOME), then the Hugging Face "
             "cache. `weights import` writes to the per-user folder unless told otherwise.",
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
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Every check in detail.")]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.", rich_help_panel="Output"),
]
PrecisionOpt = Annotated[str, typer.Option("--precision", metavar=choices(PRECISIONS), help="auto: fp16 on CUDA; bf16 on a CPU with native bf16 (AVX512-BF16, AMX, Arm BF16), else fp32 (`impersonate doctor` says which).", rich_help_panel="Runtime")]
GeneratorOpt = Annotated[str, typer.Option("--generator", help="Generator weights: a registry name, a file, or 'none' (warp-only, no GAN weights).", rich_help_panel="Model")]
SizeOpt = Annotated[int, typer.Option("--size", metavar=choices(SIZES), help="Output size in pixels (square person-centred crop).", rich_help_panel="Output")]
BackgroundOpt = Annotated[str, typer.Option("--background", help="inpaint | source | black | white | gray | green | #RRGGBB.", rich_help_panel="Model")]
FrontWarpOpt = Annotated[bool, typer.Option("--front-warp", help="Copy the warped source face onto the visible front face (official option).", rich_help_panel="Model")]
CropOpt = Annotated[str, typer.Option("--crop", metavar=choices(CROPS), help="person: square crop around the person; full: the whole image padded to a square.", rich_help_panel="Model")]
BgKsOpt = Annotated[int, typer.Option("--bg-ks", help="Dilation (px) of the body mask for background inpainting.", rich_help_panel="Model")]
FtKsOpt = Annotated[int, typer.Option("--ft-ks", help="Dilation (px) of the source crop mask.", rich_help_panel="Model")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Frames per batch.", rich_help_panel="Runtime")]
PersonalizeOpt = Annotated[bool, typer.Option("--personalize", help="Fine-tune the generator on the source first (the official post-tune; slow on a CPU). Cached per source.", rich_help_panel="Personalization")]
TuneStepsOpt = Annotated[Optional[int], typer.Option("--personalize-steps", help="At most this many fine-tuning steps (default: the official schedule: imitate/novelview 5 epochs over 8 pairs, swap 50 steps).", rich_help_panel="Personalization")]
TuneSecondsOpt = Annotated[Optional[float], typer.Option("--personalize-seconds", help="At most this many seconds of fine-tuning.", rich_help_panel="Personalization")]
RendererOpt = Annotated[str, typer.Option("--renderer", metavar=choices(RENDERERS), help="nmr: the official neural_renderer (CUDA only); auto uses it when installed, else torch.", rich_help_panel="Runtime")]
CameraOpt = Annotated[str, typer.Option("--camera", metavar=choices(CAMERAS), help="smooth: the source's framing + the driver's movement; source: the source's framing; copy: the driver's cameras.", rich_help_panel="Model")]
LayoutOpt = Annotated[str, typer.Option("--layout", metavar=choices(LAYOUTS), help="side-by-side: the driver on the left.", rich_help_panel="Output")]
FrameOpt = Annotated[str, typer.Option("--frame", metavar=choices(FRAMES), help="crop: the square person crop at --size; source: pasted back into the (first) source photo at its own size.", rich_help_panel="Output")]
PartOpt = Annotated[str, typer.Option("--part", help=f"Parts taken from the reference, comma-separated: a group ({' | '.join(PART_GROUPS)}) or part names ({', '.join(PART_NAMES)}).")]
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
