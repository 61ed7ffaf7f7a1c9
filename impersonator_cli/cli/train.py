"""`impersonate train` and `impersonate evaluate`: thin wrappers over train/ and evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from impersonator_cli.cli.jobs import err, progress_bar
from impersonator_cli.cli.options import DeviceOpt, JsonOpt, WeightsDirOpt


def train(ctx: typer.Context) -> None:
    """Train the Liquid Warping GAN on iPER-layout data (options: `impersonate train --help`).

    Multi-GPU: `torchrun --nproc_per_node N -m impersonator_cli.train DATA_ROOT -o OUT ...`.
    """
    from impersonator_cli.train.__main__ import main as train_main

    code = train_main(list(ctx.args))
    if code:
        raise typer.Exit(code)


def evaluate(
    protocol: Annotated[Path, typer.Argument(help="Protocol file in the official format (e.g. iPER_protocol.json).")],
    data_root: Annotated[Path, typer.Argument(help="iPER-layout data (images/, smpls/).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report (JSON).")],
    generator: Annotated[str, typer.Option("--generator", help="Generator: registry name or checkpoint file.")] = "generator_imper_place",
    background: Annotated[str, typer.Option("--background", help="inpaintor (DeepFillv2) | generator (its BG stream).")] = "inpaintor",
    image_size: Annotated[int, typer.Option("--image-size", help="Evaluation size.")] = 256,
    max_runs: Annotated[Optional[int], typer.Option("--max-runs", help="Only the first N runs.")] = None,
    device: DeviceOpt = "auto",
    weights_dir: WeightsDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Self-imitation metrics (SSIM, PSNR, LPIPS when available) on an iPER protocol."""
    from impersonator_cli.devices import resolve_device
    from impersonator_cli.train.evaluate import evaluate as run_evaluate, format_table

    with progress_bar("evaluate", False) as progress:
        report = run_evaluate(protocol, data_root, generator, output, weights_dir=weights_dir,
                              device=str(resolve_device(device)), image_size=image_size, background=background,
                              max_runs=max_runs, progress=progress)
    err.print(format_table(report), markup=False)
    print(json.dumps({"output": str(output)}) if json_out else output)
