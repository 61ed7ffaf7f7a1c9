"""`impersonate doctor`: what this machine has and lacks, in one report (a dict, rendered by the CLI)."""

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
            _cpu_kernels_row()]
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
        from impersonator_cli.weights.store import status_rows

        return status_rows(weights_dir)
    except Exception as exc:  # noqa: BLE001
        return [_row("weights", WARN, f"could not inspect: {exc}")]


_STYLE = {OK: "green", WARN: "yellow", MISSING: "red"}


def render_report(report: dict[str, Any], console: Console) -> None:
    """Draw the report as one table per section."""
    for section, rows in report.items():
        table = Table(title=section, title_justify="left", show_header=False, box=None, pad_edge=False)
        for row in rows:
            style = _STYLE.get(row["status"], "")
            hint = f"  → {row['hint']}" if row.get("hint") else ""
            table.add_row(row["item"], f"[{style}]{row['status']}[/]", row["value"] + hint)
        console.print(table)
        console.print()
