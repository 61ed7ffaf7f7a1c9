"""`impersonate doctor`: what this machine has and lacks, in one report (a dict, rendered by the CLI).

By default a few lines and a verdict (`ready for: demo ✓ · real photos ✗ (missing: ...) · CUDA ✗`);
`--verbose` draws every check; `--json` prints the whole report. It reports and never fails: exit 0.
"""

from __future__ import annotations

import importlib
import platform
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

OK, WARN, MISSING = "ok", "warn", "missing"


def collect_report(weights_dir: Path | None = None) -> dict[str, Any]:
    """Every check as {section: [ {item, status, value, hint} ]}; never raises."""
    return {
        "python": _python_checks(),
        "torch": _torch_checks(),
        "ffmpeg": _ffmpeg_checks(),
        "renderer": _renderer_checks(),
        "weights": _weights_checks(weights_dir),
    }


def _row(item: str, status: str, value: str, hint: str = "") -> dict[str, str]:
    return {"item": item, "status": status, "value": value, "hint": hint}


def _python_checks() -> list[dict[str, str]]:
    from impersonator_cli.version import __version__

    rows = [
        _row("impersonate", OK, __version__),
        _row("python", OK, f"{platform.python_version()} ({sys.executable})"),
        _row("platform", OK, platform.platform()),
    ]
    for module in ("numpy", "smplx", "typer", "rich", "ffmpeg", "safetensors", "huggingface_hub"):
        rows.append(_import_row(module))
    rows.append(_cv2_row())
    return rows


def _import_row(module: str) -> dict[str, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report, never raise
        return _row(module, MISSING, f"{type(exc).__name__}: {exc}", "Reinstall: pip install impersonate")
    return _row(module, OK, str(getattr(mod, "__version__", "installed")))


def _cv2_row() -> dict[str, str]:
    try:
        import cv2
    except ImportError as exc:
        hint = "On servers without libGL: pip install opencv-python-headless (or apt install libgl1)."
        return _row("opencv", MISSING, str(exc), hint)
    return _row("opencv", OK, cv2.__version__)


def _torch_checks() -> list[dict[str, str]]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return [_row("torch", MISSING, str(exc), "pip install torch (see the README for CPU-only wheels)")]
    rows = [_row("torch", OK, torch.__version__), _row("threads", OK, str(torch.get_num_threads())),
            _cpu_kernels_row(), *_precision_rows()]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append(_row(f"cuda:{i}", OK, f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
    else:
        cuda_build = torch.version.cuda or "none (CPU-only build)"
        rows.append(_row("cuda", WARN, f"no CUDA device; torch CUDA build: {cuda_build}", "Runs on the CPU (slower)."))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        rows.append(_row("mps", OK, "available"))
    return rows


def _cpu_kernels_row() -> dict[str, str]:
    from impersonator_cli.devices import allocator_tuning_wanted, fast_cpu_kernels

    kernels = ("fast (channels-last, Winograd 3x3)" if fast_cpu_kernels()
               else "reference (IMPERSONATE_CPU_KERNELS=reference)")
    allocator = "large tensors kept on the heap" if allocator_tuning_wanted() else "allocator untouched"
    return _row("cpu kernels", OK, f"{kernels}; {allocator}")


PRECISION_ITEM = "precision"


def _precision_rows() -> list[dict[str, str]]:
    """What `--precision auto` picks on the default device, and why (devices.auto_precision), and the
    CPU facts that rule reads: "auto on cpu → fp32: this CPU has no native bf16 (AVX2)" (JSON: also
    device, precision and reason as keys of the row)."""
    from impersonator_cli.devices import X86_BF16_FLAGS, ARM_BF16_FLAGS, auto_precision, cpu_bf16_facts, resolve_device

    try:
        device = resolve_device("auto")
        precision, reason = auto_precision(device)
        capability, flags, onednn = cpu_bf16_facts()
    except Exception as exc:  # noqa: BLE001 - report, never raise
        return [_row(PRECISION_ITEM, WARN, f"could not tell: {exc}")]
    native = sorted(f for f in flags if f in X86_BF16_FLAGS or f in ARM_BF16_FLAGS)
    facts = (f"torch capability {capability}; bf16 flags: {', '.join(native) or 'none'}; "
             f"oneDNN bf16: {'yes' if onednn else 'no'}")
    row = _row(PRECISION_ITEM, OK, f"auto on {device.type} → {reason}")
    row.update(device=device.type, precision=precision, reason=reason)
    return [row, _row("cpu bf16", OK, facts)]


def _ffmpeg_checks() -> list[dict[str, str]]:
    try:
        from impersonator_cli.io.probe import ffmpeg_info

        info = ffmpeg_info()
    except Exception as exc:  # noqa: BLE001
        return [_row("ffmpeg", MISSING, str(exc), "pip install imageio-ffmpeg, or apt install ffmpeg")]
    return [
        _row("ffmpeg", OK, f"{info.version} ({info.path})"),
        _row("libx264", OK if info.libx264 else MISSING, "listed" if info.libx264 else "not listed",
             "" if info.libx264 else "Video output needs libx264: pip install imageio-ffmpeg."),
        _row("aac", OK if info.aac else WARN, "listed" if info.aac else "not listed",
             "" if info.aac else "Audio will not be kept without the aac encoder."),
        _row("h264_nvenc", OK if info.h264_nvenc else WARN, "listed" if info.h264_nvenc else "not listed",
             "Listed only: it also needs an NVIDIA GPU and driver." if info.h264_nvenc else ""),
        _row("ffprobe", OK if info.ffprobe else WARN, info.ffprobe or "not found",
             "" if info.ffprobe else "Optional: probing falls back to the ffmpeg binary."),
    ]


def _renderer_checks() -> list[dict[str, str]]:
    rows = [_row("torch rasterizer", OK, "built in (CPU and CUDA)")]
    from impersonator_cli.render.backends import nmr_available

    if nmr_available():
        rows.append(_row("neural_renderer", OK, "official face-index kernel importable (--renderer nmr, CUDA)"))
    else:
        rows.append(_row("neural_renderer", WARN, "not installed (optional)", "Only needed for --renderer nmr."))
    return rows


def _weights_checks(weights_dir: Path | None) -> list[dict[str, str]]:
    try:
        from impersonator_cli.weights import store

        return [_folder_row(weights_dir), *store.status_rows(weights_dir)]
    except Exception as exc:  # noqa: BLE001
        return [_row("weights", WARN, f"could not inspect: {exc}")]


FOLDER_ITEM = "weights folder"


def _folder_row(weights_dir: Path | None) -> dict[str, str]:
    """Where lookups start, in what order they go on, and where `weights import` writes."""
    from impersonator_cli.weights import store

    first, into = store.target_dir(weights_dir), store.install_dir(weights_dir).absolute()
    looked = ", ".join(str(d) for d in store.search_dirs(weights_dir)[1:])
    then = f"then {looked}, then the Hugging Face cache" if looked else "then the Hugging Face cache"
    writes = "" if into == first else f"; `weights import` writes to {into}"
    return _row(FOLDER_ITEM, OK, f"{first} ({then}{writes})")


_STYLE = {OK: "green", WARN: "yellow", MISSING: "red"}
_SYSTEM = ("python", "torch", "ffmpeg")  # what every job needs; weights are judged apart


def render_report(report: dict[str, Any], console: Console, verbose: bool = False,
                  weights_dir: Path | None = None) -> None:
    """A few lines and the verdict; `verbose`: every check, one table per section."""
    if verbose:
        _render_full(report, console)
    else:
        _render_short(report, console)
    if _missing_weights(report):
        from impersonator_cli.weights.store import route

        console.print(route(weights_dir), markup=False, highlight=False)
    console.print(verdict(report), markup=False, highlight=False)
    if not verbose:
        console.print("Every check: impersonate doctor --verbose", style="dim", markup=False)


def verdict(report: dict[str, Any]) -> str:
    """`ready for: demo ✓ · real photos ✗ (missing: hmr, ...) · CUDA ✗`."""
    system = _problems(report)
    weights = _missing_weights(report)
    demo = _mark(not system, system)
    photos = _mark(not system and not weights, system + weights)
    cuda = any(r["item"].startswith("cuda:") and r["status"] == OK for r in report.get("torch", []))
    return f"ready for: demo {demo} · real photos {photos} · CUDA {'✓' if cuda else '✗'}"


def _mark(ok: bool, missing: list[str]) -> str:
    if ok:
        return "✓"
    shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
    return f"✗ (missing: {shown})"


def _problems(report: dict[str, Any]) -> list[str]:
    return [r["item"] for section in _SYSTEM for r in report.get(section, []) if r["status"] == MISSING]


def _missing_weights(report: dict[str, Any]) -> list[str]:
    return [r["item"] for r in report.get("weights", []) if r["status"] == MISSING]


def _value(report: dict[str, Any], section: str, item: str) -> str:
    """The value of a check without its parenthesis (`3.11.7 (/usr/bin/python3)` -> `3.11.7`)."""
    row = next((r for r in report.get(section, []) if r["item"] == item), None)
    if row is None or row["status"] == MISSING:
        return "missing"
    words = row["value"].split(" (")[0].split()
    if "version" in words[:-1]:  # ffmpeg's banner: "ffmpeg version n7.1-12-gabc Copyright ..."
        return words[words.index("version") + 1].split("-")[0]
    return " ".join(words)


def _render_short(report: dict[str, Any], console: Console) -> None:
    torch_row = next((r for r in report.get("torch", []) if r["item"].startswith("cuda")), None)
    device = "CPU only" if torch_row is None or torch_row["status"] != OK else "CUDA"
    console.print(f"impersonate {_value(report, 'python', 'impersonate')} · Python {_value(report, 'python', 'python')}"
                  f" · torch {_value(report, 'torch', 'torch')} ({device}) · ffmpeg {_value(report, 'ffmpeg', 'ffmpeg')}",
                  markup=False, highlight=False)
    precision = next((r for r in report.get("torch", []) if r["item"] == PRECISION_ITEM), None)
    if precision is not None:
        console.print(f"precision: {precision['value']}", markup=False, highlight=False)
    for section in _SYSTEM:
        for row in report.get(section, []):
            if row["status"] == MISSING:
                hint = f" → {row['hint']}" if row.get("hint") else ""
                console.print(f"✗ {row['item']}: {row['value']}{hint}", markup=False, highlight=False)
    from impersonator_cli.weights.registry import REGISTRY

    status = {r["item"]: r["status"] for r in report.get("weights", [])}
    needed = [row.name for row in REGISTRY if row.required]
    have = sum(status.get(name) == OK for name in needed)
    folder = _value(report, "weights", FOLDER_ITEM)
    console.print(f"weights: {have} of {len(needed)} needed files found; folder: {folder}", markup=False, highlight=False)


def _render_full(report: dict[str, Any], console: Console) -> None:
    """Every check, one table per section; the weights' shared route is printed once, after them."""
    for section, rows in report.items():
        table = Table(title=section, title_justify="left", show_header=False, box=None, pad_edge=False)
        for row in rows:
            style = _STYLE.get(row["status"], "")
            shown = row.get("hint") and section != "weights"
            hint = f"  → {row['hint']}" if shown else ""
            table.add_row(row["item"], f"[{style}]{row['status']}[/]", row["value"] + hint)
        console.print(table)
        if section == "weights":
            _print_sources(rows, console)
        console.print()


def _print_sources(rows: list[dict[str, str]], console: Console) -> None:
    """Which official archive each absent file comes from (instead of one hint per file)."""
    from impersonator_cli.weights.registry import NAMES, VGG_URL, get

    by_release: dict[str, list[str]] = {}
    for row in rows:
        if row["status"] != OK and row["item"] in NAMES:
            by_release.setdefault(get(row["item"]).release, []).append(row["item"])
    for release, names in by_release.items():
        where = VGG_URL if release == "torchvision" else f"the official {release}.zip"
        console.print(f"not here, from {where}: {', '.join(names)}", markup=False, highlight=False)
