"""Swap personalization (official swap post-tune, spec §5.3) on two textured mannequins, tiny generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.pipeline.source import source_from_tensors
from impersonator_cli.tune import loop as L
from impersonator_cli.tune import objective as O
from impersonator_cli.tune import pairs as P
from impersonator_cli.tune.cache import tensor_digest
from impersonator_cli.render.flow import erode, identity_grid, warp
from impersonator_cli.gan.generator import LiquidWarpingGenerator, compose
from impersonator_cli.render.body_view import view_body
from impersonator_cli.render.texture import render_texture
from support.fp import lwb_tolerance, to_float64

N = 64
UPRIGHT = (math.pi, 0.0, 0.0)  # pi about x: upright in the y-down image


def _person(kit, cam, arm_deg, turn, texture, bg_colour):
    smpl, maps, corner_uv, _ = kit
    pose = torch.zeros(1, 72)
    pose[:, :3] = torch.tensor(UPRIGHT)
    pose[0, 1] = math.radians(turn)
    pose[0, 16 * 3 + 2] = math.radians(arm_deg)
    shape = torch.zeros(1, 10)
    cam = torch.tensor([cam])
    yy, xx = torch.meshgrid(torch.linspace(0, 1, N), torch.linspace(0, 1, N), indexing="ij")
    background = torch.stack([xx * bg_colour[0], yy * bg_colour[1], torch.full_like(xx, bg_colour[2])])[None] * 2 - 1
    view = view_body(smpl, cam, pose, shape, N)
    image = render_texture(view.raster, corner_uv, texture, (background + 1) / 2) * 2 - 1
    body = BodyModel(smpl=smpl, maps=maps, device=torch.device("cpu"))
    return source_from_tensors(body, image, torch.cat([cam, pose, shape], 1), background)


@pytest.fixture(scope="module")
def scene(mannequin_kit):
    smpl, maps, _, texture = mannequin_kit
    body = BodyModel(smpl=smpl, maps=maps, device=torch.device("cpu"))
    source = _person(mannequin_kit, (0.9, 0.0, 0.25), -60, 0, texture, (1.0, 1.0, 0.5))
    other = texture.flip(0).roll(37, dims=-1)  # another person: other colours and layout of the clothes
    reference = _person(mannequin_kit, (0.8, 0.05, 0.2), 40, 30, other, (0.3, 0.8, 0.1))
    return body, source, reference, P.swap_set(body, source, reference)


def _generator(seed=0):
    torch.manual_seed(seed)
    return LiquidWarpingGenerator(conv_dim=8, repeat_num=2)


def test_lr_schedule_matches_the_official_loop():
    d = (2e-4 - 1e-5) / 25
    assert L.decayed_lr(0) == L.decayed_lr(25) == L.decayed_lr(26) == 2e-4  # decays start after 0-based step 26
    assert L.decayed_lr(27) == pytest.approx(2e-4 - d, rel=1e-12)
    assert L.decayed_lr(49) == pytest.approx(2e-4 - 23 * d, rel=1e-12)  # the last of the official 50 steps
    assert L.decayed_lr(50) == pytest.approx(2e-4 - 24 * d, rel=1e-12)
    assert L.decayed_lr(500) == 1e-5  # longer budgets never go below the final lr
    # independent reference: simulate the official loop (decrement after each 0-based step > 25)
    lr, used = 2e-4, []
    for step in range(50):
        used.append(lr)
        if step > 25:
            lr -= d
    assert np.allclose(used, [L.decayed_lr(s) for s in range(50)], rtol=0, atol=1e-15)


def test_pair_runs_both_ways_between_the_two_bodies(scene):
    body, source, reference, pair = scene
    p = pair.pairs
    assert len(p) == 2 and torch.equal(pair.image[0], source.image[0]) and torch.equal(pair.image[1], reference.image[0])
    assert torch.equal(p.cond[0], reference.cond[0]) and torch.equal(p.cond[1], source.cond[0])
    assert torch.equal(p.pseudo, erode(torch.cat([reference.cond, source.cond])[:, 2:3], 3))
    # a pair of a person with itself has identity flows on its body (geometric truth)
    same = P.swap_set(body, source, source)
    body = source.view.raster.foreground[0]
    ident = identity_grid(N)[0] * (N - 1) / N  # renderer pixel centres
    for T in (same.pairs.T[0], same.pairs.T_cycle[1]):
        assert torch.allclose(T[body], ident[body], atol=1e-5)
    # the flow s->t is the cycle flow of t->s
    assert torch.equal(p.T[0], p.T_cycle[1]) and torch.equal(p.T[1], p.T_cycle[0])


def test_objective_on_both_directions_is_the_mean_of_each(scene):
    """In float64: batch of two against one at a time differs by summation order (~1e-16) and by the
    LWB's float32 sampling, bounded by support/fp.lwb_tolerance (1.2e-4)."""
    _, _, _, pair = scene
    pair = to_float64(pair)
    g = _generator().double()
    tol = lwb_tolerance(g, N)
    init = O.swap_initial(g, pair)
    both, t2 = O.swap_loss(g, pair, torch.arange(2), init, None)
    one = [O.swap_loss(g, pair, torch.tensor([i]), init[i:i + 1], None)[1] for i in range(2)]
    # all terms are means over the batch, and instance norm is per sample
    for name in ("cycle", "struct", "mask", "total"):
        assert getattr(t2, name) == pytest.approx((getattr(one[0], name) + getattr(one[1], name)) / 2, rel=tol)
    # a weighted sum of four positive float64 numbers: gamma_7(2^-53) ~ 1e-15 relative
    assert t2.total == pytest.approx(10 * t2.cycle + 10 * t2.struct + t2.face + 5 * t2.mask, rel=1e-13)
    # at step 0 the fake target equals the initial prediction: struct is only the structure term
    with torch.no_grad():
        back = warp(init, pair.pairs.T_cycle)
        ref = 2 * (pair.image * (1 - pair.cond[:, 2:3]) - back).abs().mean()
    assert t2.struct == pytest.approx(float(ref), rel=tol)


def test_tuning_lowers_the_loss_and_leaves_the_bg_stream_alone(scene):
    _, _, _, pair = scene
    g = _generator()
    bg_before = {k: v.clone() for k, v in g.bg_model.state_dict().items()}
    tsf_before = {k: v.clone() for k, v in g.tsf_model.state_dict().items()}
    with torch.no_grad():
        rec0 = g.decode_source(g.encode_source(O.src_input(pair)))
    err0 = float((compose(rec0.color, rec0.attention, pair.background) - pair.image).abs().mean())
    seen = []
    report = L.personalize(g, pair, L.SWAP, L.Budget(steps=8), use_face=False, cache=False,
                                progress=lambda s, total, loss: seen.append((s, total)))
    assert report.steps == 8 and seen[-1] == (8, 8)
    assert np.mean(report.losses[-3:]) < 0.95 * np.mean(report.losses[:3])
    with torch.no_grad():
        rec = g.decode_source(g.encode_source(O.src_input(pair)))
    assert float((compose(rec.color, rec.attention, pair.background) - pair.image).abs().mean()) < err0
    assert all(torch.equal(v, g.bg_model.state_dict()[k]) for k, v in bg_before.items())
    assert any(not torch.equal(v, g.tsf_model.state_dict()[k]) for k, v in tsf_before.items())
    assert float(torch.tensor([1e-39]) * torch.tensor([1.0])) != 0.0  # subnormal mode restored


def test_batch_one_alternates_directions_and_budgets_stop(scene):
    assert [L.batch_at(s, 2, 1).tolist() for s in range(4)] == [[0], [1], [0], [1]]
    assert L.batch_at(3, 2, 4).tolist() == [0, 1]
    body, source, reference, pair = scene
    assert L.tune(_generator(), pair, L.SWAP, L.Budget(seconds=0.0)).steps == 0
    assert L.step_limit(L.SWAP, L.Budget(), 2, 2) == 50 and L.step_limit(L.SWAP, L.Budget(seconds=9.0), 2, 2) == 50
    front = P.swap_set(body, source, reference, front_warp=True)
    report = L.tune(_generator(), front, L.SWAP, L.Budget(steps=2), batch_size=1)
    assert report.steps == 2 and all(math.isfinite(x) for x in report.losses)


def test_cache_hit_on_a_second_run_and_miss_for_another_reference(scene, tmp_path):
    body, source, reference, pair = scene
    g1 = _generator()
    first = L.personalize(g1, pair, L.SWAP, L.Budget(steps=2), use_face=False, cache_dir=tmp_path)
    assert not first.cache_hit and first.steps == 2
    g2 = _generator()
    second = L.personalize(g2, pair, L.SWAP, L.Budget(steps=2), use_face=False, cache_dir=tmp_path)
    assert second.cache_hit and second.cache_key == first.cache_key and second.losses == first.losses
    sd1, sd2 = g1.state_dict(), g2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert any(not torch.equal(sd2[k], v) for k, v in _generator().state_dict().items())
    flipped = P.swap_set(body, reference, source)  # the key covers both images and their roles
    assert tensor_digest(*flipped.tensors()) != tensor_digest(*pair.tensors())
    other = L.personalize(_generator(), P.swap_set(body, source, reference, front_warp=True), L.SWAP,
                          L.Budget(steps=2), use_face=False, cache_dir=tmp_path)
    assert not other.cache_hit and other.cache_key != first.cache_key  # settings are in the key
