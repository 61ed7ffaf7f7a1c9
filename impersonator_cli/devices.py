"""Device and precision resolution, done once at the edge (CLI or API constructor)."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch

from impersonator_cli.defaults import ENV_PRECISION
from impersonator_cli.errors import EnvironmentProblem, UsageError

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Runtime:
    """Where and how the networks run."""

    device: torch.device
    precision: str  # one of PRECISIONS
    reason: str = ""  # why this precision: "<precision>: <why>" (doctor, job summaries)

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
    """'auto': fp16 on CUDA; on a CPU bf16 where it computes bf16 natively, fp32 otherwise
    (:func:`auto_precision`); fp32 on MPS. Unsafe requests are downgraded with a warning. The
    Runtime's ``reason`` says which rule chose the precision."""
    dev = resolve_device(device)
    precision = (precision or "auto").strip().lower()
    if precision == "auto":
        precision, reason = auto_precision(dev)
    elif precision in PRECISIONS:
        reason = f"{precision}: asked for (--precision {precision})"
    else:
        raise UsageError(f"Unknown precision '{precision}'", hint=f"Use auto or one of: {', '.join(PRECISIONS)}.")
    if precision == "fp16" and dev.type == "cpu":
        warnings.warn("fp16 is slow and imprecise on CPU; using bf16 instead.", stacklevel=2)
        precision, reason = "bf16", "bf16: fp16 was asked for, which is slow and imprecise on a CPU"
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("This GPU has no bf16 support; using fp16 instead.", stacklevel=2)
        precision, reason = "fp16", "fp16: bf16 was asked for, which this GPU does not support"
    if precision == "bf16" and dev.type == "cpu" and auto_precision(dev)[0] != "bf16":
        reason += f"; {auto_precision(dev)[1].split(': ', 1)[1]}: emulated, much slower than fp32"
    if dev.type == "cpu":
        tune_cpu_allocator()
    if dev.type == "cuda" and precision == "fp32":
        ieee_fp32_on_cuda()
    return Runtime(device=dev, precision=precision, reason=reason)


# --------------------------------------------------------------------- --precision auto on a CPU

#: CPU flags (as /proc/cpuinfo spells them) of native bf16 arithmetic: x86 dot-product and matrix
#: instructions on bf16 pairs with float32 accumulation, and Arm's BF16 extension (BFDOT, BFMMLA;
#: macOS: hw.optional.arm.FEAT_BF16). AVX-512 alone (Skylake-X) only converts: oneDNN emulates.
X86_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
ARM_BF16_FLAGS = {"bf16": "Arm BF16"}


def cpu_precision_rule(capability: str, flags: Iterable[str], onednn_bf16: bool = True) -> tuple[str, str]:
    """The one rule for ``--precision auto`` on a CPU: (precision, reason). Pure: no probing.

    capability: ``torch.backends.cpu.get_cpu_capability()`` ("DEFAULT", "NO AVX", "AVX2", "AVX512",
    "VSX", "Z VECTOR", "SVE256"): the vector kernels torch runs; it never names bf16, so the CPU
    flags decide. flags: the CPU's feature flags (:func:`cpu_flags`). onednn_bf16: whether torch's
    oneDNN runs bf16 convolutions on this CPU (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``;
    without it bf16 convolutions fall back to a slow reference loop).

    bf16 when the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16 with torch's AVX-512 kernels,
    or Arm BF16) and oneDNN uses it; fp32 otherwise. A capability below AVX512 on such an x86 CPU
    means torch was held back (ATEN_CPU_CAPABILITY): fp32 then too.
    """
    cap = (capability or "unknown").strip().upper() or "UNKNOWN"
    have = {str(f).strip().lower() for f in flags}
    x86 = [name for flag, name in X86_BF16_FLAGS.items() if flag in have]
    arm = [name for flag, name in ARM_BF16_FLAGS.items() if flag in have]
    native = " and ".join(x86 or arm)
    if not native:
        return "fp32", f"fp32: this CPU has no native bf16 ({cap})"
    if x86 and not cap.startswith("AVX512"):
        return "fp32", f"fp32: this CPU has {native}, but torch runs its {cap} kernels (ATEN_CPU_CAPABILITY)"
    if not onednn_bf16:
        return "fp32", f"fp32: this CPU has {native}, but this torch build has no oneDNN bf16 kernels"
    return "bf16", f"bf16: this CPU has {native} ({cap})"


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``--precision auto`` picks on ``device``, and why: (precision, reason).
    $IMPERSONATE_PRECISION, when set, is what auto stands for (e.g. fp32 to keep the official
    computation on a bf16 CPU, in scripts and in the test suite)."""
    pinned = os.environ.get(ENV_PRECISION, "").strip().lower()
    if pinned:
        if pinned not in PRECISIONS:
            raise UsageError(f"{ENV_PRECISION}={pinned} is not a precision",
                             hint=f"Set it to one of: {', '.join(PRECISIONS)}, or unset it.")
        return pinned, f"{pinned}: {ENV_PRECISION}={pinned}"
    if device.type == "cuda":
        return "fp16", "fp16: the default on CUDA"
    if device.type == "mps":
        return "fp32", "fp32: the default on MPS (reduced precision is not validated there)"
    return cpu_precision_rule(*cpu_bf16_facts())


@functools.lru_cache(maxsize=1)
def cpu_bf16_facts() -> tuple[str, frozenset, bool]:
    """This machine's inputs to :func:`cpu_precision_rule`, read once per process (microseconds):
    (torch's CPU capability, the CPU's flags, whether oneDNN runs bf16 here)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - an old or odd build: no vector kernels assumed
        capability = "unknown"
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001
        onednn = False
    return capability, cpu_flags(), onednn


def cpu_flags() -> frozenset:
    """The CPU's feature flags in /proc/cpuinfo's spelling (x86 "flags", Arm "Features"); on macOS the
    Arm BF16 extension as "bf16" (sysctl hw.optional.arm.FEAT_BF16). Empty where neither is readable
    (Windows): --precision auto then keeps fp32."""
    if sys.platform == "darwin":
        return frozenset({"bf16"}) if _sysctl_int(b"hw.optional.arm.FEAT_BF16") == 1 else frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def _sysctl_int(name: bytes) -> int | None:
    try:
        libc = ctypes.CDLL("libc.dylib")
        value, size = ctypes.c_int64(0), ctypes.c_size_t(8)
        if libc.sysctlbyname(name, ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return value.value


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
