"""`impersonate bench`: time every stage and the end-to-end frame rate with full-width random networks.

No weights are needed: the networks have the official architecture and random values (their speed
does not depend on the values), and bodies are the mannequin's. Numbers are medians of a few runs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import replace
from types import SimpleNamespace
from typing import Callable

import torch

from impersonator_cli.devices import Runtime, resolve_runtime


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` after one warm-up call."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage_inputs(size: int, batch: int, device: torch.device, gen=None) -> SimpleNamespace:
    """What the stages are timed on: the mannequin's body model, `batch` dance poses (cam, pose,
    shape) and their views `tgt` at `size`, one random source `image` viewed in the first pose
    (`src`, its condition map `src_cond`, a crop mask `ft_mask` of ones), a random `background`,
    the full-width generator without background stream (`gen`, random values; or the one given),
    and the generator's float32 inputs: the flow composition `stage2`, its flow `T`, `src_in` and
    `tsf_in`."""
    from impersonator_cli.demo.world import dance
    from impersonator_cli.pipeline.compose import flow_composition
    from impersonator_cli.gan.generator import LiquidWarpingGenerator
    from impersonator_cli.demo.mannequin_assets import write_mannequin_assets
    from impersonator_cli.pipeline.rig import load_body_model
    from impersonator_cli.render.body_view import view_body

    with tempfile.TemporaryDirectory() as tmp:
        write_mannequin_assets(tmp)
        body = load_body_model(tmp, device)
    cams, poses = dance(batch)
    cam = torch.from_numpy(cams).float().to(device)
    pose = torch.from_numpy(poses).float().to(device)
    shape = torch.zeros(1, 10, device=device)
    src = view_body(body.smpl, cam[:1], pose[:1], shape, size)
    tgt = view_body(body.smpl, cam, pose, shape, size)
    image = torch.rand(1, 3, size, size, device=device) * 2 - 1
    background = torch.rand(1, 3, size, size, device=device) * 2 - 1
    gen = (LiquidWarpingGenerator(bg_stream=False) if gen is None else gen).to(device).eval()
    stage2 = flow_composition(body.maps, [image], [src], tgt)
    src_cond = body.maps.render_cond(src.raster.face_index)
    src_in = torch.cat([image, src_cond], 1)
    tsf_in = torch.cat([stage2.warped, stage2.cond], 1)
    return SimpleNamespace(body=body, cam=cam, pose=pose, shape=shape, src=src, tgt=tgt, image=image, gen=gen,
                           stage2=stage2, T=stage2.flows[0], src_in=src_in, tsf_in=tsf_in, src_cond=src_cond,
                           ft_mask=torch.ones_like(image[:, :1]), background=background)


TRANSFER = "generator transfer (per frame)"
MATMUL_SIZE = 2048  # the yardstick's square matrix multiply
REFERENCE_TRANSFER = "generator transfer, reference kernels (per frame)"
SPEEDUP = "generator transfer speed-up over the reference kernels (fp32)"


def _stage_rows(size: int, batch: int, runtime: Runtime, repeats: int, gen=None) -> tuple[list[dict], list[dict]]:
    """(rows of the path the jobs run, comparison rows). Every row names the precision it ran in:
    the generator runs through the jobs' synthesizer (its autocast, its kernels), everything else in
    float32 as in the jobs. On a CPU the comparison rows time the transfer in float32 with the fast
    kernels (when the run's precision is not fp32) and with PyTorch's own kernels, and give the
    speed-up of the run's transfer over the latter."""
    from impersonator_cli.body.hmr import HMR
    from impersonator_cli.pipeline.compose import flow_composition
    from impersonator_cli.pipeline.synth import LWBSynthesizer
    from impersonator_cli.gan.inpaintor import InpaintSANet
    from impersonator_cli.demo.mannequin import mannequin_arrays
    from impersonator_cli.render.body_view import view_body

    device, precision = runtime.device, runtime.precision
    s = stage_inputs(size, batch, device, gen)
    body, cam, pose, shape, src, tgt, image, gen = s.body, s.cam, s.pose, s.shape, s.src, s.tgt, s.image, s.gen
    stage2, bg = s.stage2, s.background.expand(batch, -1, -1, -1)
    inp = InpaintSANet().to(device).eval()
    hmr = HMR(mannequin_arrays()).to(device).eval()

    def transfer(synth, feats):
        return lambda: synth.render([feats], stage2.warped, stage2.cond, stage2.flows, bg)

    def timed(stages: dict) -> list[dict]:
        return [{"size": size, "stage": name, "precision": p, "ms": 1000 * _time(fn, device, repeats) / per}
                for name, (fn, per, p) in stages.items()]

    synth = LWBSynthesizer(gen, runtime)  # what the jobs render with
    with torch.no_grad():
        feats = synth.encode(image, s.src_cond, s.ft_mask)
        rows = timed({
            "smpl (per frame)": (lambda: body.smpl(pose, shape.expand(batch, -1)), batch, "fp32"),
            "rasterize (per frame)": (lambda: view_body(body.smpl, cam, pose, shape, size), batch, "fp32"),
            "maps + flow + warp (per frame)": (lambda: flow_composition(body.maps, [image], [src], tgt), batch,
                                               "fp32"),
            TRANSFER: (transfer(synth, feats), batch, precision),
            "generator encode source (once)": (lambda: synth.encode(image, s.src_cond, s.ft_mask), 1, precision),
            "inpaintor (once per source)": (lambda: inp(image, torch.zeros_like(image[:, :1])), 1, "fp32"),
            "hmr 224 (per crop)": (lambda: hmr(torch.rand(batch, 3, 224, 224, device=device)), batch, "fp32"),
        })
        extra = []
        if device.type == "cpu":
            fp32 = LWBSynthesizer(gen, replace(runtime, precision="fp32", reason="fp32: bench comparison"))
            feats32 = feats if precision == "fp32" else fp32.encode(image, s.src_cond, s.ft_mask)
            compare = {} if precision == "fp32" else {
                "generator transfer, fast kernels (per frame)": (transfer(fp32, feats32), batch, "fp32")}
            compare[REFERENCE_TRANSFER] = (lambda: _reference_kernels(gen, transfer(fp32, feats32)), batch, "fp32")
            extra = timed(compare)
            extra.append({"size": size, "stage": SPEEDUP, "precision": precision,
                          "ratio": extra[-1]["ms"] / next(r["ms"] for r in rows if r["stage"] == TRANSFER)})
        extra.append({"size": size, "precision": precision,
                      **compute_bound(transfer(synth, feats), batch, device, runtime.dtype, repeats)})
    return rows, extra


def compute_bound(fn: Callable[[], object], per: int, device: torch.device, dtype: torch.dtype,
                  repeats: int) -> dict:
    """How fast ``fn`` (``per`` frames) would run if all its multiply-adds went at this machine's
    large matrix-multiply rate: {stage, fps, gmac (per frame, as run: Winograd products counted,
    not the direct convolution's), matmul_gmacs}. A yardstick for the measured rate: everything
    else (norms, transforms, memory traffic) only adds time, though a convolution library may beat
    the plain matrix multiply by a little."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    gmac = counter.get_total_flops() / 2e9 / per
    n = MATMUL_SIZE
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    rate = n ** 3 / 1e9 / _time(lambda: a @ b, device, repeats)
    return {"stage": f"generator transfer at the {n}² matmul rate", "fps": rate / gmac,
            "gmac": gmac, "matmul_gmacs": rate}


def _reference_kernels(gen, fn):
    """Run ``fn`` with the generator's fast CPU kernels off (PyTorch's own kernels)."""
    previous, gen.fast_cpu = gen.fast_cpu, False
    try:
        return fn()
    finally:
        gen.fast_cpu = previous


def _end_to_end(size: int, frames: int, batch: int, device: str, precision: str) -> dict:
    """Imitation from a saved motion with a full-width random generator and the warp-only path,
    timed after a one-batch warm-up (filter transforms, allocator, thread pools)."""
    from impersonator_cli.api import Impersonator
    from impersonator_cli.demo.world import build_demo
    from impersonator_cli.api import ImitateOptions, SourceOptions

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = build_demo(Path(tmp), size=size, frames=frames)
        gen_path = _full_width_generator(Path(tmp))
        for label, generator in (("end-to-end, LWB generator", str(gen_path)), ("end-to-end, warp-only", "none")):
            imp = Impersonator(weights_dir=files.weights_dir, device=device, precision=precision,
                               generator=generator, size=size)
            src = imp.prepare(files.source, smpl=files.source_smpl, options=SourceOptions(crop="full"))
            imp.imitate([src], files.motion, Path(tmp) / "warm-up.mp4",  # one-time kernel setup
                        options=ImitateOptions(batch_size=batch, max_frames=batch), overwrite=True)
            t0 = time.perf_counter()
            imp.imitate([src], files.motion, Path(tmp) / f"{generator == 'none'}.mp4",
                        options=ImitateOptions(batch_size=batch), overwrite=True)
            out[label] = frames / (time.perf_counter() - t0)
    return out


def run_bench(sizes=(256, 512), batch: int = 4, frames: int = 16, device: str = "auto",
              precision: str = "auto", repeats: int = 3, memory: bool = False) -> list[dict]:
    """Rows of {size, stage, precision, ms} per stage and {size, stage, precision, fps} end to end,
    per size the path the jobs run first, then on a CPU the float32 transfer kernels and the
    speed-up {size, stage, precision, ratio} of the run's transfer over PyTorch's own float32
    kernels, then the matmul-rate yardstick; with `memory`, also {size, stage, precision, peak_mb}
    rows from :func:`memory_rows`."""
    runtime = resolve_runtime(device, precision)
    rows = []
    for size in sizes:
        stages, extra = _stage_rows(size, batch, runtime, repeats)
        rows += stages
        for label, fps in _end_to_end(size, frames, batch, str(runtime.device), runtime.precision).items():
            rows.append({"size": size, "stage": label, "precision": _ran_in(label, runtime.precision), "fps": fps})
        rows += extra
        if memory:
            rows += memory_rows(size, frames, batch, str(runtime.device), runtime.precision)
    return rows


def _ran_in(label: str, precision: str) -> str:
    """The precision a whole imitation ran its networks in: warp-only runs none in reduced precision."""
    return "fp32" if "warp-only" in label else precision


def memory_rows(size: int, frames: int, batch: int, device: str, precision: str,
                generators: tuple[str, ...] = ("full-width", "none")) -> list[dict]:
    """Peak memory of whole imitations from a saved motion, for a short driver (`frames`) and one
    4x longer, each in a fresh process (peak RSS; on CUDA also the peak of tensors on the GPU).
    Memory that stays flat with video length gives about the same peak for both."""
    from impersonator_cli.demo.world import build_demo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = build_demo(Path(tmp), size=size, frames=4 * frames)
        for generator in generators:
            if generator == "full-width":
                generator = str(_full_width_generator(Path(tmp)))
            label = "warp-only" if generator == "none" else "LWB generator"
            for n in (frames, 4 * frames):
                job = [str(files.weights_dir), str(files.source), str(files.source_smpl), str(files.motion),
                       generator, size, n, batch, device, precision, str(Path(tmp) / "out.mp4")]
                peak = _in_fresh_process(job)
                rows.append({"size": size, "stage": f"peak memory, {label}, {n} frames",
                             "precision": _ran_in(label, precision), **peak})
    return rows


def _full_width_generator(folder: Path) -> Path:
    """A random generator of the official width (conv_dim 64, 6 res-blocks) saved into `folder`."""
    from impersonator_cli.weights.checkpoints import save_safetensors
    from impersonator_cli.gan.generator import LiquidWarpingGenerator

    return save_safetensors(LiquidWarpingGenerator().state_dict(), folder / "gen.safetensors",
                            {"conv_dim": 64, "repeat_num": 6})


def _in_fresh_process(job: list) -> dict:
    code = ("import json, sys; from impersonator_cli.demo.bench import peak_memory_job; "
            "print(json.dumps(peak_memory_job(*json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(job)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the memory benchmark's imitation failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, which starts afresh at exec; getrusage's
    maxrss would carry the forking parent's peak into a child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20


def peak_memory_job(weights_dir: str, source: str, source_smpl: str, motion: str, generator: str, size: int,
                    frames: int, batch: int, device: str, precision: str, output: str) -> dict:
    """One imitation of `frames` frames in this process: {peak_mb (RSS), cuda_peak_mb on CUDA}."""
    from impersonator_cli.api import Impersonator
    from impersonator_cli.api import ImitateOptions, SourceOptions

    imp = Impersonator(weights_dir=weights_dir, device=device, precision=precision, generator=generator, size=size)
    src = imp.prepare(source, smpl=source_smpl, options=SourceOptions(crop="full"))
    result = imp.imitate([src], motion, output, options=ImitateOptions(batch_size=batch, max_frames=frames),
                         overwrite=True)
    if result.frames != frames:
        raise RuntimeError(f"imitated {result.frames} frames, not {frames}")
    peak = {"peak_mb": _peak_rss_mb()}
    if imp.runtime.device.type == "cuda":
        peak["cuda_peak_mb"] = torch.cuda.max_memory_allocated(imp.runtime.device) / 2 ** 20
    return peak
