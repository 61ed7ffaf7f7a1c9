"""Device and precision resolution, done once at the edge (CLI or API constructor)."""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from dataclasses import dataclass

import torch

from impersonator_cli.errors import EnvironmentProblem, UsageError

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Runtime:
    """Where and how the networks run."""

    device: torch.device
    precision: str  # one of PRECISIONS

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps if available, else cpu; explicit names are checked."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"Unknown device '{name}'", hint="Use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(
            f"Device '{name}' was requested but this torch build sees no CUDA device",
            hint="Run `impersonate doctor` to see what torch detects, install a CUDA build of torch, or use --device cpu.",
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise EnvironmentProblem(
            f"Device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) are visible",
            hint="Pick an index below that count or use --device cuda.",
        )
    if device.type == "mps" and not _mps_available():
        raise EnvironmentProblem("Device 'mps' was requested but is not available", hint="Use --device cpu.")
    return device


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """fp32 by default on CPU; fp16 by default on CUDA. Unsafe requests are downgraded with a warning."""
    dev = resolve_device(device)
    precision = (precision or "auto").strip().lower()
    if precision == "auto":
        precision = "fp16" if dev.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision '{precision}'", hint=f"Use auto or one of: {', '.join(PRECISIONS)}.")
    if precision == "fp16" and dev.type == "cpu":
        warnings.warn("fp16 is slow and imprecise on CPU; using bf16 instead.", stacklevel=2)
        precision = "bf16"
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("This GPU has no bf16 support; using fp16 instead.", stacklevel=2)
        precision = "fp16"
    if dev.type == "cpu":
        tune_cpu_allocator()
    if dev.type == "cuda" and precision == "fp32":
        ieee_fp32_on_cuda()
    return Runtime(device=dev, precision=precision)


def ieee_fp32_on_cuda() -> None:
    """Make float32 mean float32 on CUDA: PyTorch lets cuDNN run fp32 convolutions in TF32 (inputs
    rounded to a 10-bit mantissa) on Ampere and later GPUs by default; a 3x3 convolution then misses
    by ~1e-3 of its output scale instead of ~1e-6. Process-wide; set when fp32 is asked for on a
    CUDA device (the default there is fp16)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def fast_cpu_kernels() -> bool:
    """Whether the generator uses its own CPU kernels (``IMPERSONATE_CPU_KERNELS=reference``: no)."""
    return os.environ.get("IMPERSONATE_CPU_KERNELS", "fast").strip().lower() != "reference"


def allocator_tuning_wanted() -> bool:
    """Whether a CPU runtime tunes glibc's allocator (``IMPERSONATE_MALLOC_TUNING=0``: no)."""
    return sys.platform.startswith("linux") and os.environ.get("IMPERSONATE_MALLOC_TUNING", "1") != "0"


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep large CPU tensors on glibc's heap instead of fresh mmap regions (once per process).

    glibc maps every allocation above 32 MB afresh and unmaps it on free, so a network pass that
    creates such activations pays a page fault per 4 KB each time (measured at 256 x 256, batch 4:
    ~100k faults and ~0.5 s of kernel time per frame, 40% of the frame). With mmap off and a high
    trim threshold freed blocks are reused: the process keeps its peak memory instead of returning
    it between frames. No-op outside glibc Linux; ``IMPERSONATE_MALLOC_TUNING=0`` turns it off.
    Returns whether the settings are in effect.
    """
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        if allocator_tuning_wanted():
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
            except (OSError, AttributeError):
                return False
            _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _allocator_tuned


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
