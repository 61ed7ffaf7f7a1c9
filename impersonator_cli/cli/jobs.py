"""CLI commands for the three jobs and the demo: parse, call the Python API, report."""

from __future__ import annotations

import contextlib
import contextvars
import json
from pathlib import Path
from typing import Annotated, Iterator, List, Optional, Sequence

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from impersonator_cli.cli.options import (
    BatchOpt, CameraOpt, CrfOpt, DeviceOpt, FrameOpt, JobArgs, JsonOpt, LayoutOpt, OutputOpt, OverwriteOpt, PartOpt,
    PrecisionOpt, QuietOpt, with_groups,
)

err = Console(stderr=True, highlight=False)



@contextlib.contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator:
    """A frame-counting progress bar on stderr; yields the API's progress(done, total) callback."""
    with progress_bars([label], quiet) as bars:
        yield bars[label]


@contextlib.contextmanager
def progress_bars(labels: Sequence[str], quiet: bool) -> Iterator[dict]:
    """One progress bar per phase of a job (e.g. personalize, then imitate), shown together on
    stderr; yields {label: progress(done, total) callback}, the callbacks None when quiet."""
    if quiet:
        yield dict.fromkeys(labels)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tasks = [bar.add_task(label, total=None) for label in labels]
        yield {label: lambda done, total, task=task: bar.update(task, completed=done, total=total)
               for label, task in zip(labels, tasks)}


@contextlib.contextmanager
def phase_reporter(quiet: bool) -> Iterator:
    """Yields phase(name) -> progress callback: on a terminal, one labelled bar per phase (frames counted
    where the phase has frames); otherwise one line per phase as it starts."""
    if quiet:
        yield lambda name: None
        return
    if not err.is_terminal:
        def announce(name: str):
            err.print(f"{name} ...", markup=False, soft_wrap=True)
        yield announce
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err) as bar:
        current = []

        def start(name: str):
            for task in current:  # the previous phase is over
                bar.update(task, completed=bar.tasks[task].total or 1, total=bar.tasks[task].total or 1)
            task = bar.add_task(name, total=None)
            current[:] = [task]
            return lambda done, total: bar.update(task, completed=done, total=total)
        yield start


def _phases(job: str, tuning) -> list[str]:
    return ["personalize", job] if tuning is not None else [job]


def report(result, out: JobArgs) -> None:
    """Results on stdout (a path, or JSON); notes on stderr."""
    if out.json_out:
        print(json.dumps(result.to_dict()))
    else:
        print(result.output)
    if not out.quiet:
        for warning in result.warnings:
            err.print(f"[yellow]note:[/] {warning}", soft_wrap=True)


def _tuning(tune: JobArgs):
    from impersonator_cli.api import PersonalizeOptions

    if not tune.personalize and (tune.personalize_steps is not None or tune.personalize_seconds is not None):
        from impersonator_cli.errors import UsageError

        raise UsageError("--personalize-steps/--personalize-seconds need --personalize")
    return PersonalizeOptions(steps=tune.personalize_steps, seconds=tune.personalize_seconds) if tune.personalize else None


def _source_options(model: JobArgs):
    from impersonator_cli.api import SourceOptions

    return SourceOptions(crop=model.crop, background=model.background, bg_ks=model.bg_ks, ft_ks=model.ft_ks)


_PLANNING: contextvars.ContextVar = contextvars.ContextVar("impersonate_planning", default=False)


@contextlib.contextmanager
def planning() -> Iterator[None]:
    """Inside this block a job command checks its options and returns its JobSpec instead of running it
    (how `impersonate batch` validates a manifest with the very same code)."""
    token = _PLANNING.set(True)
    try:
        yield
    finally:
        _PLANNING.reset(token)


def _stage_key(args: JobArgs):
    from impersonator_cli.batch.spec import StageKey

    return StageKey(weights_dir=None if args.weights_dir is None else str(args.weights_dir), device=args.device,
                    precision=args.precision, generator=args.generator, size=args.size, renderer=args.renderer)


def _submit(kind: str, output, call: dict, args: JobArgs, phases: list[str]):
    """The job as a JobSpec when planning; otherwise run it here, with a bar per phase, and report."""
    from impersonator_cli.batch.spec import JobSpec

    spec = JobSpec(kind, _stage_key(args), output, call)
    if _PLANNING.get():
        return spec
    from impersonator_cli.batch.worker import Worker

    with progress_bars(phases, args.quiet) as bars:
        result = Worker().run(spec, progress=bars[phases[-1]] if phases else None,
                              tune_progress=bars.get("personalize"))
    report(result, args)
    return None


@with_groups(args=JobArgs)
def imitate(
    source: Annotated[List[Path], typer.Option("--source", "-s", help="Source photo (repeat for several views of one person, e.g. front and back).", show_default=False)],
    driver: Annotated[Path, typer.Option("--driver", "-d", help="Driver: a video, a folder of frames, an image, or a .motion.npz file.", show_default=False)],
    output: OutputOpt,
    source_smpl: Annotated[Optional[List[Path]], typer.Option("--source-smpl", help="Known SMPL of each source (one-frame .motion.npz), instead of running HMR.", show_default=False)] = None,
    camera: CameraOpt = "smooth",
    smooth: Annotated[float, typer.Option("--smooth", help="Temporal smoothing of driver poses, in frames (0 = off, as the official).", rich_help_panel="Model")] = 0.0,
    start: Annotated[float, typer.Option("--start", help="Start time in the driver (s).", rich_help_panel="Driver")] = 0.0,
    duration: Annotated[Optional[float], typer.Option("--duration", help="Seconds of the driver to use.", rich_help_panel="Driver")] = None,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="At most this many frames.", rich_help_panel="Driver")] = None,
    layout: LayoutOpt = "result",
    frame: FrameOpt = "crop",
    audio: Annotated[bool, typer.Option("--audio/--no-audio", help="Keep the driver's audio.", rich_help_panel="Output")] = True,
    audio_file: Annotated[Optional[Path], typer.Option("--audio-file", help="Take the audio from this file instead (e.g. the driver video with a motion-file driver), from the same start time as the motion.", rich_help_panel="Output")] = None,
    crf: CrfOpt = 18,
    batch_size: BatchOpt = 4,
    args: JobArgs = JobArgs(),
) -> None:
    """Motion imitation: the person in the source photo performs the driver's motion."""
    from impersonator_cli.api import ImitateOptions, check_imitate

    options = ImitateOptions(camera=camera, smooth=smooth, batch_size=batch_size, front_warp=args.front_warp, layout=layout, frame=frame,
                             start=start, duration=duration, max_frames=max_frames, crf=crf, audio=audio, audio_file=audio_file)
    source_options, tuning = _source_options(args), _tuning(args)
    output, driver = check_imitate(source, driver, output, options, source_smpl or (), args.overwrite)
    call = dict(sources=tuple(source), driver=driver, options=options, source_smpl=tuple(source_smpl or ()),
                source_options=source_options, overwrite=args.overwrite, personalize=tuning)
    return _submit("imitate", output, call, args, _phases("imitate", tuning))


@with_groups(args=JobArgs)
def swap(
    source: Annotated[Path, typer.Option("--source", "-s", help="The person who keeps pose, face and background (a photo, or a video).", show_default=False)],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="The person whose clothes (parts) are taken.", show_default=False)],
    output: OutputOpt,
    part: PartOpt = "body",
    source_smpl: Annotated[Optional[Path], typer.Option("--source-smpl", help="Known SMPL of the source (one-frame .motion.npz).")] = None,
    reference_smpl: Annotated[Optional[Path], typer.Option("--reference-smpl", help="Known SMPL of the reference.")] = None,
    args: JobArgs = JobArgs(),
) -> None:
    """Appearance transfer: the source person wearing the reference person's body parts (image out; video out
    when the source is a video). --personalize fine-tunes on the (source, reference) pair first (the official
    swap post-tune, 50 steps by default; a source video's first frame with a person is its source)."""
    from impersonator_cli.api import check_swap
    from impersonator_cli.io.images import is_video_path

    source_options, tuning = _source_options(args), _tuning(args)
    output = check_swap(source, reference, output, args.overwrite)
    call = dict(source=source, reference=reference, parts=part, front_warp=args.front_warp, source_smpl=source_smpl,
                reference_smpl=reference_smpl, source_options=source_options, overwrite=args.overwrite,
                personalize=tuning)
    # A video source gives a video (frame rate and audio kept); a photo's only phase is its tuning.
    phases = _phases("swap", tuning) if is_video_path(source) else ["personalize"] if tuning else []
    return _submit("swap", output, call, args, phases)


@with_groups(args=JobArgs)
def novelview(
    source: Annotated[Path, typer.Option("--source", "-s", help="Source photo.", show_default=False)],
    output: OutputOpt,
    frames: Annotated[int, typer.Option("--frames", help="Views in the orbit (video output).")] = 90,
    yaw: Annotated[Optional[List[float]], typer.Option("--yaw", help="View yaw in degrees (repeat for several).")] = None,
    pitch: Annotated[Optional[List[float]], typer.Option("--pitch", help="View pitch in degrees.")] = None,
    tpose: Annotated[bool, typer.Option("--tpose", help="Show the person in a T-pose instead of their own pose.")] = False,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the orbit video.")] = 25.0,
    source_smpl: Annotated[Optional[Path], typer.Option("--source-smpl", help="Known SMPL of the source (one-frame .motion.npz).")] = None,
    crf: CrfOpt = 18,
    batch_size: BatchOpt = 4,
    args: JobArgs = JobArgs(),
) -> None:
    """Novel view synthesis: the source person seen from other angles (orbit video, or images at --yaw/--pitch)."""
    from impersonator_cli.api import NovelViewOptions, check_novel_view

    options = NovelViewOptions(frames=frames, yaw=tuple(yaw or ()), pitch=tuple(pitch or ()), tpose=tpose, fps=fps,
                               batch_size=batch_size, front_warp=args.front_warp, crf=crf)
    source_options, tuning = _source_options(args), _tuning(args)
    output, _ = check_novel_view(output, options, args.overwrite)
    call = dict(source=source, options=options, source_smpl=source_smpl, source_options=source_options,
                overwrite=args.overwrite, personalize=tuning)
    return _submit("novelview", output, call, args, _phases("novelview", tuning))


def demo(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the demo inputs and results.")] = Path("impersonate-demo"),
    frames: Annotated[int, typer.Option("--frames", help="Frames of the dance.")] = 75,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run imitate, swap and novelview on a generated mannequin: nothing to download."""
    from impersonator_cli.demo.world import DEMO_NOTE, run_demo

    with phase_reporter(quiet) as phase:
        results = run_demo(output_dir, frames=frames, device=device, overwrite=overwrite, phase=phase)
    if json_out:
        print(json.dumps({**{name: r.to_dict() for name, r in results.items()}, "note": DEMO_NOTE}))
    else:
        for name, r in results.items():
            print(f"{name}: {r.output}")
    if not quiet:
        err.print(f"[yellow]note:[/] {DEMO_NOTE}", soft_wrap=True)


def bench(
    size: Annotated[Optional[List[int]], typer.Option("--size", help="Sizes to time (repeatable).")] = None,
    batch_size: BatchOpt = 4,
    frames: Annotated[int, typer.Option("--frames", help="Frames of the end-to-end runs.")] = 16,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per stage (median).")] = 3,
    memory: Annotated[bool, typer.Option("--memory", help="Also the peak memory of whole imitations, a driver of --frames frames and one 4x longer (fresh processes; takes minutes).")] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Time each stage and the end-to-end frame rate with full-width random networks (no weights needed)."""
    import torch
    from rich.table import Table

    from impersonator_cli.demo.bench import run_bench

    rows = run_bench(sizes=tuple(size or (256, 512)), batch=batch_size, frames=frames, device=device,
                     precision=precision, repeats=repeats, memory=memory)
    if json_out:
        print(json.dumps(rows))
        return
    from impersonator_cli.devices import resolve_runtime

    runtime = resolve_runtime(device, precision)
    table = Table(title=f"impersonate bench (batch {batch_size}, {runtime.device}, {runtime.precision}, "
                        f"{torch.get_num_threads()} threads)")
    for col in ("size", "stage", "precision", "ms / item", "frames / s", "peak MB"):
        table.add_column(col, justify="right" if col not in ("stage", "precision") else "left")
    for r in rows:
        ms = f"{r['ms']:.1f}" if "ms" in r else ""
        fps = f"{r['fps']:.2f}" if "fps" in r else f"{1000 / r['ms']:.1f}" if "ms" in r else ""
        if "ratio" in r:
            fps = f"{r['ratio']:.2f}x"
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else ""
        if "cuda_peak_mb" in r:
            peak += f" (GPU {r['cuda_peak_mb']:.0f})"
        table.add_row(str(r["size"]), r["stage"], r.get("precision", ""), ms, fps, peak)
    bounds = [f"{r['size']}²: {r['gmac']:.1f} GMAC a frame, matmul {r['matmul_gmacs']:.0f} GMAC/s"
              for r in rows if "gmac" in r]
    table.caption = (f"precision {runtime.reason}; speed-up = reference kernels' ms / this run's ms; "
                     "at the matmul rate = multiply-adds of the transfer (as run) / matrix-multiply rate; "
                     + "; ".join(bounds))
    Console().print(table)
