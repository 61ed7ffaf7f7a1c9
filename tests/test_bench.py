"""`impersonate bench` on the CPU: every stage is timed, both generator kernel sets included.

Timings are what the bench reports, never what a test asserts (they depend on the machine and its
load); the tests check the rows' structure and the exact multiply-add counts."""

from __future__ import annotations

import math

import pytest
import torch

from impersonator_cli.demo.bench import REFERENCE_TRANSFER, SPEEDUP, TRANSFER, compute_bound, run_bench


@pytest.mark.slow  # full-width generator, inpaintor and HMR, end to end at 256 x 256
def test_bench_times_every_stage_and_both_end_to_end_paths():
    rows = run_bench(sizes=(256,), batch=2, frames=2, device="cpu", precision="fp32", repeats=1)
    ms = {r["stage"]: r["ms"] for r in rows if "ms" in r}
    fps = {r["stage"]: r["fps"] for r in rows if "fps" in r}
    assert set(ms) == {"smpl (per frame)", "rasterize (per frame)", "maps + flow + warp (per frame)",
                       "generator transfer (per frame)", "generator transfer, reference kernels (per frame)",
                       "generator encode source (once)", "inpaintor (once per source)", "hmr 224 (per crop)"}
    assert {"end-to-end, LWB generator", "end-to-end, warp-only"} <= set(fps)
    assert all(r["size"] == 256 for r in rows)
    assert all(math.isfinite(v) and v > 0 for v in [*ms.values(), *fps.values()])
    bound = next(r for r in rows if "gmac" in r)
    assert bound["fps"] == pytest.approx(bound["matmul_gmacs"] / bound["gmac"], rel=1e-12)
    assert {r["precision"] for r in rows} == {"fp32"}
    speedup = next(r["ratio"] for r in rows if r["stage"] == SPEEDUP)
    assert speedup == pytest.approx(ms[REFERENCE_TRANSFER] / ms[TRANSFER], rel=1e-12)
    stages = [r["stage"] for r in rows]  # the path the jobs run first, then the comparisons
    assert stages.index("end-to-end, warp-only") < stages.index(REFERENCE_TRANSFER) < stages.index(SPEEDUP)


def test_compute_bound_counts_the_multiply_adds_of_a_known_convolution():
    x, w = torch.randn(2, 16, 32, 32), torch.randn(8, 16, 3, 3)
    row = compute_bound(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2, torch.device("cpu"),
                        torch.float32, 1)
    assert row["gmac"] == 8 * 16 * 9 * 32 * 32 / 1e9  # per frame: Co * Ci * k^2 * H * W
    assert math.isclose(row["fps"], row["matmul_gmacs"] / row["gmac"])


def test_compute_bound_counts_winograd_products_not_the_direct_convolution():
    """A fast-path 3x3 layer runs as 36 products of (tiles x Ci) by (Ci x Co) per image: 30 x 22
    pixels make 8 x 6 tiles of 4 x 4 (the 144 direct multiply-adds per tile and channel pair become
    36). Filters are transformed on the first call, so that call also counts G g G^T (162 Ci Co)."""
    from impersonator_cli.gan.blocks import Conv2d

    conv = Conv2d(256, 320, 3, padding=1, bias=False)
    x = torch.randn(2, 256, 30, 22).contiguous(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    with torch.no_grad():
        first = compute_bound(lambda: conv(x), 2, cpu, torch.float32, 1)
        again = compute_bound(lambda: conv(x), 2, cpu, torch.float32, 1)
    products = 36 * (8 * 6) * 256 * 320
    assert again["gmac"] == products / 1e9
    assert first["gmac"] == (2 * products + 162 * 256 * 320) / 2 / 1e9
    assert again["gmac"] < 0.3 * 320 * 256 * 9 * 30 * 22 / 1e9  # direct: 144 / 36 = 4x the products


@pytest.mark.slow  # four imitations in fresh processes (peak RSS is a per-process figure)
def test_peak_memory_stays_flat_with_video_length():
    from impersonator_cli.demo.bench import memory_rows

    rows = memory_rows(256, 50, 2, "cpu", "fp32", generators=("none",))
    assert [r["stage"] for r in rows] == ["peak memory, warp-only, 50 frames", "peak memory, warp-only, 200 frames"]
    short, long = (r["peak_mb"] for r in rows)
    # Keeping each extra frame (256 x 256 x 3 float32: 0.75 MB) would add 150 x 0.75 = 112 MB for the
    # longer video; a streaming job's peak does not depend on the length. 30 MB is a quarter of that
    # growth (allocator noise is a few MB).
    assert 100 < short and long < short + 30, (short, long)
