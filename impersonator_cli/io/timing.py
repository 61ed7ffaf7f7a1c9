"""Frame timing of variable-frame-rate (VFR) videos, and how we show them on a constant rate.

A phone that slows its capture in low light writes frames at uneven times. We use every decoded
frame exactly once, and write outputs at one constant rate (what players, editors and muxers expect):
the *display rate*, the rate of the clip's fastest steady stretch snapped to a common rate. Frame i
goes to output slot round(t_i * rate) (t_i in seconds from the first frame), and is held until the
next frame's slot. No two frames share a slot: a frame arriving early is pushed to the next free
slot, so every frame is shown and each one starts within about one output frame of its own time.

times: float64 seconds, ascending, first frame at 0 unless said otherwise.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

STANDARD_RATES = (24, 25, 30, 48, 50, 60, 120)  # frames/s cameras and editors use (and their x1000/1001)
COMMON_RATES = tuple(sorted({Fraction(r) for r in STANDARD_RATES}
                            | {Fraction(r * 1000, 1001) for r in (24, 30, 60)}))
MAX_DISPLAY_RATE = Fraction(120)
_STEADY_QUANTILE = 10  # percent: the short end of the intervals, robust to a few jittery ones
_SLACK = 1.01  # an interval 1 % shorter than the rate's step still gets its own slot (timestamp jitter)
_LAST_STEPS = 8  # a last frame is held for the median of the intervals before it


def is_variable(times: np.ndarray, tick: float = 0.0) -> bool:
    """Whether the intervals differ by more than 1 % of the median, or one tick of the time base
    (a constant rate stored in a coarse time base alternates between two tick counts)."""
    steps = np.diff(np.asarray(times, np.float64))
    if len(steps) < 2:
        return False
    return float(steps.max() - steps.min()) > max(tick, 0.01 * float(np.median(steps))) * (1 + 1e-9)


def last_step(times: np.ndarray, fallback: float) -> float:
    """How long the last frame is shown: the median of the last few intervals (`fallback` for one frame)."""
    steps = np.diff(np.asarray(times, np.float64))[-_LAST_STEPS:]
    return float(np.median(steps)) if len(steps) else float(fallback)


def span(times: np.ndarray, fallback_step: float) -> float:
    """Seconds from the first frame's start to the last frame's end."""
    times = np.asarray(times, np.float64)
    return float(times[-1] - times[0]) + last_step(times, fallback_step)


def display_rate(times: np.ndarray) -> Fraction:
    """The constant output rate for these frame times: of the common rates at least as fast as the
    clip's steady fast stretch (the 10th percentile of its intervals, less 1 % for jitter), the
    nearest to it; MAX_DISPLAY_RATE when none is."""
    steps = np.diff(np.asarray(times, np.float64))
    steps = steps[steps > 0]
    if not len(steps):
        return Fraction(25)
    fastest = 1.0 / float(np.percentile(steps, _STEADY_QUANTILE))
    fits = [r for r in COMMON_RATES if float(r) * _SLACK >= fastest]
    return min(fits, key=lambda r: abs(float(r) - fastest)) if fits else MAX_DISPLAY_RATE


def hold_counts(times: np.ndarray, rate: Fraction, fallback_step: float | None = None) -> np.ndarray:
    """How many output frames at `rate` each input frame fills (each >= 1; int64, one per frame).

    Frame i starts at slot max(round((t_i - t_0) * rate), previous slot + 1); the last frame is held
    until the slot nearest the clip's end (t_last + its display time)."""
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or not len(times):
        raise ValueError("times must be a non-empty 1-D array")
    rate_f = float(rate)
    ideal = np.floor((times - times[0]) * rate_f + 0.5).astype(np.int64)
    slots = np.empty_like(ideal)
    previous = -1
    for i, slot in enumerate(ideal):
        previous = slots[i] = max(int(slot), previous + 1)
    end_time = span(times, 1.0 / rate_f if fallback_step is None else fallback_step)
    end = max(int(slots[-1]) + 1, int(np.floor(end_time * rate_f + 0.5)))
    return np.diff(np.append(slots, end))


def select(times: np.ndarray, start: float = 0.0, duration: float | None = None,
           max_frames: int | None = None) -> np.ndarray:
    """Indices of the frames whose time lies in [start, start + duration), at most max_frames."""
    times = np.asarray(times, np.float64)
    eps = 1e-6  # container timestamps are exact to far better than a microsecond
    keep = times >= start - eps
    if duration is not None:
        keep &= times < start + duration - eps
    index = np.flatnonzero(keep)
    return index if max_frames is None else index[:max_frames]
