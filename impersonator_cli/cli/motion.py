"""`impersonate motion ...`: extract a driver's motion once, reuse it for many sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from impersonator_cli.cli.jobs import err, progress_bar
from impersonator_cli.cli.options import DeviceOpt, JsonOpt, OutputOpt, OverwriteOpt, QuietOpt, WeightsDirOpt

motion_app = typer.Typer(help="Driver motion files: extract once, reuse for many sources.", no_args_is_help=True)


@motion_app.command("extract")
def extract(
    driver: Annotated[Path, typer.Argument(help="Driver video, folder of frames, or image.", show_default=False)],
    output: OutputOpt,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Frames per HMR batch.")] = 8,
    start: Annotated[float, typer.Option("--start", help="Start time (s).")] = 0.0,
    duration: Annotated[Optional[float], typer.Option("--duration", help="Seconds to extract.")] = None,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="At most this many frames.")] = None,
    smooth: Annotated[float, typer.Option("--smooth", help="Temporal smoothing in frames (0 = off, as the official).")] = 0.0,
    device: DeviceOpt = "auto",
    weights_dir: WeightsDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Recover the driver's per-frame body (HMR + SMPL, person-centred) into a .motion.npz file."""
    from impersonator_cli.api import extract_motion_file

    with progress_bar("motion", quiet) as progress:
        motion = extract_motion_file(driver, output, weights_dir=weights_dir, device=device, batch_size=batch_size,
                                     start=start, duration=duration, max_frames=max_frames, smooth=smooth,
                                     overwrite=overwrite, progress=progress)
    summary = {"output": str(output), "frames": motion.frame_count,
               "fps": f"{motion.fps.numerator}/{motion.fps.denominator}", "missing_frames": list(motion.missing),
               "variable_frame_rate": motion.times is not None}
    print(json.dumps(summary) if json_out else output)
    if motion.times is not None and not quiet:
        err.print(f"[yellow]note:[/] the driver has a variable frame rate: each frame's time is kept, and jobs "
                  f"show the frames at those times on a constant {float(motion.fps):g} fps output")
    if motion.missing and not quiet:
        err.print(f"[yellow]note:[/] {len(motion.missing)} frame(s) without a plausible person hold the last good "
                  f"pose: {list(motion.missing)[:20]}")
