"""`impersonate bench` on the CPU: every stage is timed, both generator kernel sets included."""

from __future__ import annotations

import math

from impersonator_cli.demo.bench import run_bench


def test_bench_times_every_stage_and_both_end_to_end_paths():
    rows = run_bench(sizes=(256,), batch=2, frames=2, device="cpu", precision="fp32", repeats=1)
    ms = {r["stage"]: r["ms"] for r in rows if "ms" in r}
    fps = {r["stage"]: r["fps"] for r in rows if "fps" in r}
    assert {"generator transfer (per frame)", "generator transfer, reference kernels (per frame)",
            "rasterize (per frame)", "inpaintor (once per source)"} <= set(ms)
    assert all(math.isfinite(v) and v > 0 for v in [*ms.values(), *fps.values()])
    # The full-width generator does far more work per frame than warping alone.
    assert fps["end-to-end, warp-only"] > 3 * fps["end-to-end, LWB generator"]
    # The work as run: Winograd products (not the 52.8 direct GMAC) plus the direct layers; no
    # measured rate is far above what that work takes at the plain matmul rate.
    bound = next(r for r in rows if "gmac" in r)
    assert 15 < bound["gmac"] < 30 and 1000 / ms["generator transfer (per frame)"] < 2 * bound["fps"]


def test_compute_bound_counts_the_multiply_adds_of_a_known_convolution():
    import torch

    from impersonator_cli.demo.bench import compute_bound

    x, w = torch.randn(2, 16, 32, 32), torch.randn(8, 16, 3, 3)
    row = compute_bound(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2, torch.device("cpu"),
                        torch.float32, 1)
    assert row["gmac"] == 8 * 16 * 9 * 32 * 32 / 1e9  # per frame: Co * Ci * k^2 * H * W
    assert math.isclose(row["fps"], row["matmul_gmacs"] / row["gmac"])


def test_peak_memory_stays_flat_with_video_length():
    from impersonator_cli.demo.bench import memory_rows

    rows = memory_rows(256, 50, 2, "cpu", "fp32", generators=("none",))
    assert [r["stage"] for r in rows] == ["peak memory, warp-only, 50 frames", "peak memory, warp-only, 200 frames"]
    short, long = (r["peak_mb"] for r in rows)
    # Fresh processes, so each peak is the job's own. Measured: 395 and 394 MB; keeping every frame as
    # float32 (0.75 MB each) gave 393 and 489 MB (the first ~20 MB of such growth hides under the
    # peak of start-up).
    assert 100 < short and long < short + 30, (short, long)
