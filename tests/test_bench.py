"""`impersonate bench` on the CPU: every stage is timed, both generator kernel sets included."""

from __future__ import annotations

import math

from impersonator_cli.bench import run_bench


def test_bench_times_every_stage_and_both_end_to_end_paths():
    rows = run_bench(sizes=(256,), batch=2, frames=2, device="cpu", precision="fp32", repeats=1)
    ms = {r["stage"]: r["ms"] for r in rows if "ms" in r}
    fps = {r["stage"]: r["fps"] for r in rows if "fps" in r}
    assert {"generator transfer (per frame)", "generator transfer, reference kernels (per frame)",
            "rasterize (per frame)", "inpaintor (once per source)"} <= set(ms)
    assert all(math.isfinite(v) and v > 0 for v in [*ms.values(), *fps.values()])
    # The full-width generator does far more work per frame than warping alone.
    assert fps["end-to-end, warp-only"] > 3 * fps["end-to-end, LWB generator"]
