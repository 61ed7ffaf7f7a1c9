"""The Python half of `.ci/gpu-sweep` (issue 16): a tuning sweep of the generator on CUDA and a
whole-CLI measurement on a 60-s 1080p driver. One section per call, so the shell script can put each
under its own `timeout`; every result is one JSON line on stdout, also appended to --jsonl as it is
measured (a section killed at its limit keeps what it measured).

Sections:
  transfer  the generator's transfer stream (the per-frame network) on bench.stage_inputs' full-width
            random generator: batch x precision x channels-last x cudnn.benchmark, each the median of
            a few timed runs after a warm-up; then the best configuration per size (and per size and
            precision).
  pipeline  every stage of a frame batch as `imitate` runs it (rasterize, flows, warp, transfer,
            compose, the copy to the host as uint8), video encoding left out: jobs.imitate's
            render_imitation on a demo source with a full-width random generator file, for the best
            transfer configuration of each precision and for the CLI's default (batch 4).
  compile   torch.compile of the transfer (compile time apart from the steady time, and the largest
            difference from eager), or a CUDA graph of it (`--mode cudagraph`), against eager in the
            same process.
  cli       `python -m impersonator_cli imitate` on a 60-s 1920x1080 30-fps driver (testsrc2 with a
            sine soundtrack) whose motion file is written directly (the demo's dance, 1800 frames; no
            HMR): wall clock, frames, x real time; then the peak memory of imitations of 15 s and of
            60 s of it, each in a fresh process (bench's peak_memory_job).
  summary   the goals of issue 16 checked against what the files hold.

Environment: SWEEP_DEVICE (default cuda); SWEEP_SMALL=1 shrinks everything for a dry run on a CPU
(tiny sizes and frame counts, one configuration each, a 2-s driver, a narrow generator, a dynamo-only
compile: tracing without code generation). Lists can be overridden: SWEEP_SIZES, SWEEP_BATCHES, SWEEP_PRECISIONS,
SWEEP_CHANNELS_LAST, SWEEP_CUDNN_BENCHMARK (comma-separated; 0/1 for the last two), SWEEP_CLI_RUNS
(size:precision:batch,...), SWEEP_CLI_SECONDS, SWEEP_MEMORY (size:precision:batch,...),
SWEEP_MEMORY_FRAMES (short,long; default a quarter of the driver and all of it), SWEEP_PIPELINE_SIZES,
SWEEP_PIPELINE_FRAMES, SWEEP_COMPILE_SIZES, SWEEP_COMPILE_PRECISION.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from impersonator_cli.devices import ieee_fp32_on_cuda, resolve_device  # noqa: E402

SMALL = os.environ.get("SWEEP_SMALL", "0") not in ("", "0")
DEVICE = os.environ.get("SWEEP_DEVICE", "cuda")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "tf32": torch.float32}
DEFAULT_TF32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
CLI_FPS = 30
GOALS = {"bench_fps": {256: 300, 512: 80}, "cli_x_realtime_256": 10}


def _env(name: str, default: str, small: str) -> list[str]:
    value = os.environ.get(name) or (small if SMALL else default)
    return [v.strip() for v in value.split(",") if v.strip()]


SIZES = [int(v) for v in _env("SWEEP_SIZES", "256,512", "32")]
BATCHES = [int(v) for v in _env("SWEEP_BATCHES", "4,8,16,32", "2")]
PRECISIONS = _env("SWEEP_PRECISIONS", "fp16,bf16,fp32", "fp32")
LAYOUTS = [v == "1" for v in _env("SWEEP_CHANNELS_LAST", "0,1", "0")]
BENCHMARKS = [v == "1" for v in _env("SWEEP_CUDNN_BENCHMARK", "0,1", "0")]


# ------------------------------------------------------------------------------------ plumbing

class Sink:
    """Prints each row as one JSON line and appends it to a file (flushed: a killed section keeps it)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.rows: list[dict] = []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, row: dict) -> dict:
        self.rows.append(row)
        line = json.dumps(row, default=str)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as handle:
                handle.write(line + "\n")
        return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, warmup: int, repeats: int, max_s: float) -> tuple[float, int]:
    """Median seconds of `fn` after `warmup` calls; `repeats` timed calls, fewer (at least 3) once
    `max_s` seconds of them have run."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= min(3, repeats) and time.perf_counter() - started > max_s:
            break
    return statistics.median(times), len(times)


def _set_mode(precision: str, cudnn_benchmark: bool) -> None:
    """Process-wide switches of one configuration: cudnn.benchmark, and TF32 as the runtime sets it
    (fp32: IEEE, as resolve_runtime makes it; fp16/bf16: PyTorch's defaults; tf32: TF32 on)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if precision == "fp32":
        ieee_fp32_on_cuda()
    elif precision == "tf32":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = DEFAULT_TF32


def _autocast(device: torch.device, precision: str, cache: bool = True):
    """As LWBSynthesizer runs the generator: fp32 weights, autocast to fp16/bf16."""
    if precision in ("fp32", "tf32"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision], cache_enabled=cache)


def _layout(cl: bool) -> torch.memory_format:
    return torch.channels_last if cl else torch.contiguous_format


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row(section: str, size: int, batch: int, precision: str, cl: bool, bm: bool, compile_: str,
         seconds: float, runs: int, device: torch.device, frames: int | None = None, **extra) -> dict:
    """One configuration's result; `seconds` per timed call of `frames` frames (default: one batch)."""
    frames = frames or batch
    return {"section": section, "size": size, "batch": batch, "precision": precision, "channels_last": cl,
            "cudnn_benchmark": bm, "compile": compile_, "ms_per_frame": round(1000 * seconds / frames, 3),
            "fps": round(frames / seconds, 2), "peak_gpu_mb": _peak_mb(device), "runs": runs,
            **({} if frames == batch else {"frames": frames}), **extra}


def _error(section: str, exc: BaseException, **where) -> dict:
    return {"section": section, **where, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}


def _read_rows(path: str | None) -> list[dict]:
    if not path or not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def _best(rows: list[dict], section: str, **match) -> dict | None:
    found = [r for r in rows if r.get("section") == section and "fps" in r and "error" not in r
             and all(r.get(k) == v for k, v in match.items())]
    return max(found, key=lambda r: r["fps"]) if found else None


def _generator_file(folder: Path) -> Path:
    """A generator checkpoint for the jobs: full width (bench's), or a narrow one in SWEEP_SMALL."""
    from impersonator_cli.demo.bench import _full_width_generator

    folder.mkdir(parents=True, exist_ok=True)
    if not SMALL:
        return _full_width_generator(folder)
    from impersonator_cli.gan.generator import LiquidWarpingGenerator
    from impersonator_cli.weights.checkpoints import save_safetensors

    return save_safetensors(LiquidWarpingGenerator(conv_dim=8, repeat_num=1).state_dict(),
                            folder / "gen-small.safetensors", {"conv_dim": 8, "repeat_num": 1})


def _device_row(sink: Sink, device: torch.device) -> None:
    info = {"section": "device", "device": str(device), "torch": torch.__version__, "small": SMALL}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    else:
        info.update(threads=torch.get_num_threads())
    sink(info)


# ------------------------------------------------------------------------------------ transfer

def _transfer_order() -> list[tuple[bool, bool, list[int]]]:
    """(channels_last, cudnn_benchmark, batches) in the order they are timed: the runtime's own way
    (NCHW, no benchmark) at every batch first, then each switch alone, then both; batch 16 first in
    those, so a deadline cuts the least telling ones."""
    first = sorted(BATCHES, key=lambda b: (b != 16, b != 32, -b))
    order = []
    for cl, bm in ((False, False), (True, False), (False, True), (True, True)):
        if cl in LAYOUTS and bm in BENCHMARKS:
            order.append((cl, bm, sorted(BATCHES) if (cl, bm) == (False, False) else first))
    return order


def section_transfer(args, sink: Sink) -> None:
    from impersonator_cli.demo.bench import stage_inputs

    device = resolve_device(DEVICE)
    _device_row(sink, device)
    slices = [(size, p) for size in SIZES for p in PRECISIONS]
    started = time.monotonic()
    inputs, inputs_size = None, None
    for k, (size, precision) in enumerate(slices):
        deadline = started + args.budget * (k + 1) / len(slices)  # time left over rolls on
        skipped = 0
        if inputs_size != size:
            inputs = None
            _free(device)
            inputs, inputs_size = stage_inputs(size, max(BATCHES), device), size
            inputs.gen.fast_cpu = False  # PyTorch's kernels on a CPU too, as on CUDA
        s = inputs
        for cl, bm, batches in _transfer_order():
            if time.monotonic() > deadline:
                skipped += len(batches)
                continue
            try:
                _set_mode(precision, bm)
                gen = s.gen.to(memory_format=_layout(cl))
                with torch.no_grad(), _autocast(device, precision):
                    feats = gen.encode_source(s.src_in.contiguous(memory_format=_layout(cl)))
            except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
                sink(_error("transfer", exc, size=size, precision=precision, channels_last=cl, cudnn_benchmark=bm))
                continue
            for batch in batches:
                if time.monotonic() > deadline:
                    skipped += 1
                    continue
                tsf = s.tsf_in[:batch].contiguous(memory_format=_layout(cl))
                T = s.T[:batch].contiguous()

                def fn(gen=gen, feats=feats, tsf=tsf, T=T):
                    with torch.no_grad(), _autocast(device, precision):
                        return gen.transfer(feats, tsf, T)
                try:
                    _reset_peak(device)
                    seconds, runs = _median_seconds(fn, device, args.warmup + bm, args.repeats, args.max_s)
                    sink(_row("transfer", size, batch, precision, cl, bm, "none", seconds, runs, device))
                except Exception as exc:  # noqa: BLE001
                    sink(_error("transfer", exc, size=size, batch=batch, precision=precision, channels_last=cl,
                                cudnn_benchmark=bm))
                    _free(device)
            del feats
        if skipped:
            sink({"section": "transfer", "size": size, "precision": precision, "skipped": skipped,
                  "why": "slice deadline"})
    s = inputs = None
    rows = sink.rows
    for size in SIZES:
        sink({"section": "transfer", "summary": "best per size", "size": size,
              "best": _best(rows, "transfer", size=size),
              "best_per_precision": {p: _best(rows, "transfer", size=size, precision=p) for p in PRECISIONS}})


# ------------------------------------------------------------------------------------ pipeline

def section_pipeline(args, sink: Sink) -> None:
    from impersonator_cli.api import ImitateOptions, Impersonator, SourceOptions
    from impersonator_cli.demo.world import build_demo, dance
    from impersonator_cli.jobs.imitate import render_imitation

    device = resolve_device(DEVICE)
    started = time.monotonic()
    work = Path(args.work)
    gen_file = _generator_file(work / "gen")
    transfer_rows = _read_rows(args.jsonl)
    sizes = [int(v) for v in _env("SWEEP_PIPELINE_SIZES", "256,512", "256")]
    frames = int(os.environ.get("SWEEP_PIPELINE_FRAMES", "4" if SMALL else "256"))
    cams, poses = dance(frames)
    slices = [(size, p) for p in PRECISIONS for size in sizes]  # fp16 at every size first
    demos = {}
    for k, (size, precision) in enumerate(slices):
        deadline = started + args.budget * (k + 1) / len(slices)
        if size not in demos:
            demos[size] = build_demo(work / f"demo-{size}", size=size, frames=4)
        files = demos[size]
        if time.monotonic() > deadline:
            sink({"section": "pipeline", "size": size, "precision": precision, "skipped": "slice deadline"})
            continue
        best = _best(transfer_rows, "transfer", size=size, precision=precision)
        configs = [(4, False, False)]  # the CLI's default batch, the runtime's own layout
        if best:
            configs.insert(0, (best["batch"], best["channels_last"], best["cudnn_benchmark"]))
        elif not SMALL:
            configs.insert(0, (16, False, True))
        configs = list(dict.fromkeys(configs))
        try:
            imp = Impersonator(weights_dir=files.weights_dir, device=str(device), precision=precision,
                               generator=str(gen_file), size=size)
            src = imp.prepare(files.source, smpl=files.source_smpl, options=SourceOptions(crop="full"))
        except Exception as exc:  # noqa: BLE001
            sink(_error("pipeline", exc, size=size, precision=precision))
            continue
        for batch, cl, bm in configs:
            if time.monotonic() > deadline:
                sink({"section": "pipeline", "size": size, "precision": precision, "batch": batch,
                      "skipped": "slice deadline"})
                continue
            try:
                _set_mode(precision, bm)
                imp.synth.generator.to(memory_format=_layout(cl))
                imp.synth.generator.fast_cpu = False
                feats = imp.stages.encode([src])
                options = ImitateOptions(batch_size=batch)
                count = {"frames": 0}

                def emit(out, count=count):
                    count["frames"] += len(out)

                def run(n, options=options, feats=feats, emit=emit):
                    render_imitation(imp.body, imp.synth, [src], feats, cams[:n], poses[:n], size, options, emit)
                _reset_peak(device)
                run(min(frames, 2 * batch))  # warm-up: kernels, cudnn.benchmark, allocator
                _sync(device)
                count["frames"] = 0
                t0 = time.perf_counter()
                run(frames)
                _sync(device)
                seconds = time.perf_counter() - t0
                sink(_row("pipeline", size, batch, precision, cl, bm, "none", seconds, 1, device,
                          frames=count["frames"],
                          what="render_imitation: rasterize, flows, warp, transfer, compose, to uint8 "
                               "on the host; no encoding"))
            except Exception as exc:  # noqa: BLE001
                sink(_error("pipeline", exc, size=size, precision=precision, batch=batch, channels_last=cl,
                            cudnn_benchmark=bm))
        imp = src = feats = None
        _free(device)


# ------------------------------------------------------------------------------------ compile

def section_compile(args, sink: Sink) -> None:
    import torch._dynamo

    from impersonator_cli.demo.bench import stage_inputs

    device = resolve_device(DEVICE)
    started = time.monotonic()
    rows = _read_rows(args.jsonl)
    precision = os.environ.get("SWEEP_COMPILE_PRECISION", "fp32" if device.type == "cpu" else "fp16")
    sizes = [int(v) for v in _env("SWEEP_COMPILE_SIZES", "256", str(SIZES[0]))]
    for size in sizes:
        best = _best(rows, "transfer", size=size, precision=precision)
        batch, cl, bm = ((best["batch"], best["channels_last"], best["cudnn_benchmark"]) if best
                         else (BATCHES[0], False, False) if SMALL else (16, False, True))
        s = stage_inputs(size, batch, device)
        gen = s.gen.to(memory_format=_layout(cl))
        gen.fast_cpu = False
        _set_mode(precision, bm)
        with torch.no_grad(), _autocast(device, precision):
            feats = gen.encode_source(s.src_in.contiguous(memory_format=_layout(cl)))
        tsf, T = s.tsf_in.contiguous(memory_format=_layout(cl)), s.T.contiguous()
        where = dict(size=size, batch=batch, precision=precision, channels_last=cl, cudnn_benchmark=bm)

        def step(tsf, T, cache=True):
            with torch.no_grad(), _autocast(device, precision, cache):
                out = gen.transfer(feats, tsf, T)
            return out.color, out.attention

        _reset_peak(device)
        seconds, runs = _median_seconds(lambda: step(tsf, T), device, args.warmup + bm, args.repeats, args.max_s)
        sink(_row("compile", size, batch, precision, cl, bm, "none (eager, same process)", seconds, runs, device))
        reference = step(tsf, T)[0].float()
        for mode in args.mode:
            if time.monotonic() > started + args.budget:
                sink({"section": "compile", **where, "compile": mode, "skipped": "deadline"})
                continue
            try:
                _reset_peak(device)
                if mode == "cudagraph":
                    fn, out, setup_s = _cuda_graph(step, tsf, T, device)
                    extra = {"capture_s": round(setup_s, 2)}
                else:
                    fn, out, setup_s, graphs = _compiled(step, tsf, T, device, mode)
                    extra = {"compile_s": round(setup_s, 2), "dynamo_graphs": graphs}
                diff = (out[0].float() - reference).abs().max().item()
                seconds, runs = _median_seconds(fn, device, args.warmup, args.repeats, args.max_s)
                sink(_row("compile", size, batch, precision, cl, bm, mode, seconds, runs, device,
                          max_abs_diff_vs_eager=diff, **extra))
            except Exception as exc:  # noqa: BLE001
                sink(_error("compile", exc, **where, compile=mode))
            finally:
                torch._dynamo.reset()
                _free(device)


def _compiled(step, tsf, T, device, mode: str):
    """torch.compile(step): (fn, first output, seconds of the first call (compiling), dynamo graphs)."""
    import torch._dynamo

    torch._dynamo.reset()
    stats = torch._dynamo.utils.counters["stats"]
    before = stats["unique_graphs"]
    if mode == "dynamo-eager":  # tracing only (no code generated): what a CPU dry run can afford
        compiled = torch.compile(step, backend="eager")
    else:
        compiled = torch.compile(step, mode=None if mode == "default" else mode)
    t0 = time.perf_counter()
    out = compiled(tsf, T)
    _sync(device)
    return (lambda: compiled(tsf, T)), out, time.perf_counter() - t0, stats["unique_graphs"] - before


def _cuda_graph(step, tsf, T, device):
    """The eager transfer captured in one CUDA graph (static inputs; autocast's weight cache off, as
    capture needs): (replay, output, seconds to warm up and capture)."""
    if device.type != "cuda":
        raise RuntimeError("CUDA graphs need a CUDA device")
    t0 = time.perf_counter()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step(tsf, T, False)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(tsf, T, False)
    graph.replay()
    _sync(device)
    return graph.replay, out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------ cli

def _make_driver(path: Path, seconds: float) -> Path:
    """testsrc2 1920x1080 at 30 fps with a 440 Hz sine soundtrack, H.264 ultrafast + AAC."""
    from impersonator_cli.io.probe import find_ffmpeg

    cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate={CLI_FPS}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def _driver_motion(driver: Path, path: Path, frames: int) -> Path:
    """The driver's motion file without HMR: the demo's dance at the driver's rate and frame size."""
    from impersonator_cli.body.motion import MotionData, content_hash, save_motion
    from impersonator_cli.body.tracking import padded_frame_box
    from impersonator_cli.demo.world import dance

    cams, poses = dance(frames)
    motion = MotionData(cams=cams, poses=poses, shapes=np.zeros((frames, 10)),
                        boxes=np.repeat(padded_frame_box(1920, 1080)[None], frames, 0), fps=Fraction(CLI_FPS),
                        frame_size=(1920, 1080), content_hash=content_hash(driver), source_name=driver.name)
    return save_motion(path, motion, overwrite=True)


def _spec(text: str) -> tuple[int, str, int]:
    size, precision, batch = text.split(":")
    return int(size), precision, int(batch)


def section_cli(args, sink: Sink) -> None:
    from impersonator_cli.demo.bench import _in_fresh_process
    from impersonator_cli.demo.world import build_demo
    from impersonator_cli.io.probe import probe

    device = resolve_device(DEVICE)
    started = time.monotonic()
    deadline = started + args.budget
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seconds = float(os.environ.get("SWEEP_CLI_SECONDS", "2" if SMALL else "60"))
    frames = int(round(seconds * CLI_FPS))
    t0 = time.perf_counter()
    driver = _make_driver(work / f"driver-{seconds:g}s.mp4", seconds)
    motion = _driver_motion(driver, work / f"driver-{seconds:g}s.motion.npz", frames)
    gen_file = _generator_file(work / "gen")
    sink({"section": "cli", "setup": "driver + motion + generator", "seconds": round(time.perf_counter() - t0, 2),
          "driver": driver.name, "driver_mb": round(driver.stat().st_size / 2 ** 20, 1), "frames": frames,
          "generator": gen_file.name})
    demos = {}

    def demo(size: int):
        if size not in demos:
            demos[size] = build_demo(work / f"demo-{size}", size=size, frames=4)
        return demos[size]

    runs = [_spec(v) for v in _env("SWEEP_CLI_RUNS", "256:fp16:16,256:fp16:4,512:fp16:16,256:fp32:16,512:fp32:16",
                                   "256:fp32:4")]
    memory = [_spec(v) for v in _env("SWEEP_MEMORY", "256:fp16:16", "256:fp32:4")]
    memory_frames = [int(v) for v in _env("SWEEP_MEMORY_FRAMES", f"{frames // 4},{frames}", "4,16")]
    plan = [("run", r) for r in runs[:2]] + [("memory", m) for m in memory] + [("run", r) for r in runs[2:]]
    for kind, (size, precision, batch) in plan:
        left = deadline - time.monotonic()
        where = {"size": size, "precision": precision, "batch": batch}
        if left < 5:
            sink({"section": "cli" if kind == "run" else "memory", **where, "skipped": "deadline"})
            continue
        files = demo(size)
        if kind == "memory":
            for n in memory_frames:
                job = [str(files.weights_dir), str(files.source), str(files.source_smpl), str(motion), str(gen_file),
                       size, n, batch, str(device), precision, str(work / "memory.mp4")]
                try:
                    t1 = time.perf_counter()
                    peak = _in_fresh_process(job)
                    sink({"section": "memory", **where, "frames": n, "seconds_of_video": n / CLI_FPS,
                          "wall_s": round(time.perf_counter() - t1, 2), **peak})
                except Exception as exc:  # noqa: BLE001
                    sink(_error("memory", exc, **where, frames=n))
            continue
        output = work / f"imitate-{size}-{precision}-{batch}.mp4"
        cmd = [sys.executable, "-m", "impersonator_cli", "imitate", "--source", str(files.source),
               "--source-smpl", str(files.source_smpl), "--driver", str(motion), "--audio-file", str(driver),
               "-o", str(output), "--weights-dir", str(files.weights_dir), "--generator", str(gen_file),
               "--device", str(device), "--precision", precision, "--size", str(size), "--crop", "full",
               "--batch-size", str(batch), "--overwrite", "--json", "--quiet"]
        t1 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            sink({"section": "cli", **where, "error": f"timed out after {left:.0f} s (section deadline)"})
            continue
        wall = time.perf_counter() - t1
        if done.returncode != 0:
            sink({"section": "cli", **where, "error": f"exit {done.returncode}", "stderr": done.stderr[-1500:]})
            continue
        result = json.loads(done.stdout[done.stdout.index("{"):])
        info = probe(output)
        video_s = result["frames"] / CLI_FPS
        render = result.get("timings_s", {}).get("render_encode")
        sink({"section": "cli", **where, "wall_s": round(wall, 2), "frames": result["frames"],
              "video_s": video_s, "x_realtime": round(video_s / wall, 2), "fps_wall": round(result["frames"] / wall, 1),
              "render_encode_s": render, "x_realtime_render_encode": round(video_s / render, 2) if render else None,
              "output_frames": info.frame_count, "has_audio": info.has_audio, "output_mb": round(output.stat().st_size / 2 ** 20, 1),
              "warnings": result.get("warnings", [])[:3], "command": " ".join(cmd[1:4]) + " ..."})
        output.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ summary

def section_summary(args, sink: Sink) -> None:
    """Issue 16's goals against what this run measured (reads the files; prints lines)."""
    rows = _read_rows(args.sweep) + _read_rows(args.cli)
    out = []

    def say(text: str) -> None:
        out.append(text)

    log = Path(args.gpu_check_log) if args.gpu_check_log else None
    if log and log.exists():
        text = log.read_text(errors="replace")
        say("gpu-check: " + ("; ".join(re.findall(r"^=== FAILED.*$", text, re.M)) or "no step failed"))
        tests = re.findall(r"^\d+ (?:passed|failed|skipped).*$", text, re.M) or re.findall(r"^=+ .*(?:passed|failed).* =+$", text, re.M)
        say("  gpu tests (test_gpu.py: fp32/fp16 vs CPU fp32): " + (tests[-1] if tests else "no pytest summary found"))
        precision = "?"
        for line in text.splitlines():
            title = re.search(r"impersonate bench \(batch (\d+), (\S+), (\w+),", line)
            if title:
                precision = title.group(3)
            row = re.search(r"(\d+)\s*[│|]\s*(end-to-end, [^│|]*?)\s*[│|][^│|]*[│|]\s*([\d.]+)", line)
            if row:
                size, stage, fps = int(row.group(1)), row.group(2), float(row.group(3))
                goal = GOALS["bench_fps"].get(size) if "LWB" in stage else None
                verdict = "" if goal is None else f" (goal >= {goal}: {'met' if fps >= goal else 'NOT met'})"
                say(f"  bench {precision} {size}: {stage}: {fps} fps{verdict}")
    else:
        say("gpu-check: no log (skipped)")
    for size in SIZES + [s for s in (256, 512) if s not in SIZES]:
        best = _best(rows, "transfer", size=size)
        if best:
            say(f"transfer {size}: best {best['fps']} fps ({best['ms_per_frame']} ms/frame) at batch {best['batch']}, "
                f"{best['precision']}, channels_last={best['channels_last']}, cudnn.benchmark={best['cudnn_benchmark']}")
        pipe = _best(rows, "pipeline", size=size)
        if pipe:
            goal = GOALS["bench_fps"].get(size)
            verdict = "" if goal is None else f" (goal for bench end to end: >= {goal} fps: " \
                                              f"{'met' if pipe['fps'] >= goal else 'NOT met'} without encoding)"
            say(f"pipeline {size}: best {pipe['fps']} fps at batch {pipe['batch']}, {pipe['precision']}, "
                f"channels_last={pipe['channels_last']}, cudnn.benchmark={pipe['cudnn_benchmark']}{verdict}")
        for r in rows:
            if r.get("section") == "compile" and r.get("size") == size and "fps" in r:
                setup = r.get("compile_s", r.get("capture_s"))
                say(f"compile {size}: {r['compile']}: {r['fps']} fps"
                    + (f", setup {setup} s, max |diff| vs eager {r.get('max_abs_diff_vs_eager'):.3g}" if setup is not None else ""))
    for r in rows:
        if r.get("section") == "cli" and "x_realtime" in r:
            goal = GOALS["cli_x_realtime_256"] if r["size"] == 256 else None
            verdict = "" if goal is None else f" (goal >= {goal}x: {'met' if r['x_realtime'] >= goal else 'NOT met'})"
            say(f"cli {r['size']} {r['precision']} batch {r['batch']}: {r['frames']} frames in {r['wall_s']} s wall = "
                f"{r['x_realtime']}x real time{verdict}; render+encode {r['render_encode_s']} s; audio {r['has_audio']}")
        elif r.get("section") in ("cli", "memory", "transfer", "pipeline", "compile") and "error" in r:
            say(f"{r['section']} error {({k: v for k, v in r.items() if k in ('size', 'precision', 'batch', 'compile')})}: {r['error'][:200]}")
    mem = [r for r in rows if r.get("section") == "memory" and "peak_mb" in r]
    for key in sorted({(r["size"], r["precision"], r["batch"]) for r in mem}):
        pair = sorted((r for r in mem if (r["size"], r["precision"], r["batch"]) == key), key=lambda r: r["frames"])
        if len(pair) >= 2:
            short, long = pair[0], pair[-1]
            gpu = "cuda_peak_mb" in short and "cuda_peak_mb" in long
            a, b = (short["cuda_peak_mb"], long["cuda_peak_mb"]) if gpu else (short["peak_mb"], long["peak_mb"])
            flat = b <= a * 1.05 + 64
            say(f"memory {key}: {'GPU' if gpu else 'RSS'} peak {a:.0f} MB for {short['frames']} frames, {b:.0f} MB for "
                f"{long['frames']} ({'flat' if flat else 'GROWS'}); RSS {short['peak_mb']:.0f} / {long['peak_mb']:.0f} MB")
    text = "\n".join(out)
    print(text, flush=True)
    if args.output:
        Path(args.output).write_text(text + "\n")


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section", choices=["transfer", "pipeline", "compile", "cli", "summary"])
    parser.add_argument("--jsonl", help="append rows to this file (pipeline/compile read transfer's best from it)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds for the section (checked between configurations)")
    parser.add_argument("--work", default=None, help="folder for inputs and outputs (default: a temporary one)")
    parser.add_argument("--warmup", type=int, default=1 if SMALL else 2)
    parser.add_argument("--repeats", type=int, default=1 if SMALL else 7)
    parser.add_argument("--max-s", type=float, default=2.0, help="stop timing a configuration after this many seconds (3 runs at least)")
    parser.add_argument("--mode", action="append", default=None,
                        help="compile: default | max-autotune-no-cudagraphs | reduce-overhead | cudagraph | dynamo-eager (repeatable)")
    parser.add_argument("--sweep", help="summary: the sweep's jsonl")
    parser.add_argument("--cli", help="summary: the CLI section's jsonl")
    parser.add_argument("--gpu-check-log", help="summary: gpu-check's log")
    parser.add_argument("--output", help="summary: also write it here")
    args = parser.parse_args(argv)
    if args.mode is None:
        args.mode = ["dynamo-eager"] if SMALL else ["default"]
    sink = Sink(args.jsonl)
    sections = {"transfer": section_transfer, "pipeline": section_pipeline, "compile": section_compile,
                "cli": section_cli, "summary": section_summary}
    with contextlib.ExitStack() as stack:
        if args.work is None and args.section in ("pipeline", "cli"):
            args.work = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"gpu-sweep-{args.section}-"))
        t0 = time.perf_counter()
        sections[args.section](args, sink)
        if args.section != "summary":
            print(json.dumps({"section": args.section, "done_s": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
