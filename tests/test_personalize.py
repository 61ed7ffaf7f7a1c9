"""Personalization (official post-tune, spec §5.2) on the textured mannequin with a tiny generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from impersonator_cli.body.rotation import matrix_to_rotvec, rotvec_to_matrix
from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.pipeline.source import source_from_tensors
from impersonator_cli.tune import loop as L
from impersonator_cli.tune import objective as O
from impersonator_cli.tune import pairs as P
from impersonator_cli.errors import WeightsError
from impersonator_cli.render.flow import erode, identity_grid
from impersonator_cli.gan.generator import LiquidWarpingGenerator, compose
from impersonator_cli.gan.losses import FaceLoss, Sphere20a
from impersonator_cli.render.body_view import view_body
from impersonator_cli.render.texture import render_texture
from support.fp import lwb_tolerance, to_float64

N = 64
CAM = torch.tensor([[0.9, 0.0, 0.25]])
UPRIGHT = torch.tensor([[math.pi, 0.0, 0.0]])  # pi about x: upright in the y-down image


@pytest.fixture(scope="module")
def scene(mannequin_kit):
    smpl, maps, corner_uv, texture = mannequin_kit
    pose = torch.zeros(1, 72)
    pose[:, :3] = UPRIGHT
    pose[0, 16 * 3 + 2] = math.radians(-60)  # left arm down
    shape = torch.zeros(1, 10)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, N), torch.linspace(0, 1, N), indexing="ij")
    background = torch.stack([xx, yy, torch.full_like(xx, 0.5)])[None] * 2 - 1
    view = view_body(smpl, CAM, pose, shape, N)
    image = render_texture(view.raster, corner_uv, texture, (background + 1) / 2) * 2 - 1
    body = BodyModel(smpl=smpl, maps=maps, device=torch.device("cpu"))
    source = source_from_tensors(body, image, torch.cat([CAM, pose, shape], 1), background)
    return body, source, P.imitate_set(body, source)


def _generator(seed=0):
    torch.manual_seed(seed)
    return LiquidWarpingGenerator(conv_dim=8, repeat_num=2)


def _source_error(g, data):
    with torch.no_grad():
        rec = g.decode_source(g.encode_source(O.src_input(data)))
        return float((compose(rec.color, rec.attention, data.background) - data.image).abs().mean())


def test_rotvec_round_trip_including_half_turns():
    rng = np.random.default_rng(0)
    vecs = [rng.normal(size=3) for _ in range(5)] + [np.array([math.pi, 0, 0]), np.array([0, 0, math.pi]),
                                                     np.array([1, 1, 0]) / math.sqrt(2) * math.pi]
    for r in vecs:
        R = rotvec_to_matrix(r)
        assert np.allclose(rotvec_to_matrix(matrix_to_rotvec(R)), R, atol=1e-9)


def test_default_targets_turn_the_source_body(scene):
    body, source, data = scene
    targets = P.default_targets(source)
    assert targets.pose.shape == (8, 72) and torch.equal(targets.cam, CAM.expand(8, 3))
    R0, R_src = (rotvec_to_matrix(r.double().numpy()) for r in (targets.pose[0, :3], UPRIGHT[0]))
    assert np.allclose(R0, R_src, atol=1e-6)  # no turn keeps the source rotation
    views = view_body(body.smpl, targets.cam, targets.pose, targets.shape, N)
    front = body.maps.render_front(views.raster.face_index).flatten(1).sum(1)
    assert front[0] > 0 and front[5] == 0  # the 180-degree target shows the back of the head
    assert len(data.pairs) == 8 and data.pairs.T.shape == (8, N, N, 2)


def test_pairs_of_the_source_pose_itself_are_identity_flows(scene):
    body, source, _ = scene
    same = P.TargetBodies(CAM.expand(2, 3), source.pose.expand(2, -1), source.shape)
    data = P.imitate_set(body, source, same)
    pairs = data.pairs
    body = source.view.raster.foreground
    ident = (identity_grid(N) * (N - 1) / N).expand(2, -1, -1, -1)  # renderer pixel centres
    for T in (pairs.T, pairs.T_cycle):
        assert torch.allclose(T[body.expand(2, -1, -1)], ident[body.expand(2, -1, -1)], atol=1e-5)
    assert torch.equal(pairs.cond, source.cond.expand(2, -1, -1, -1))
    assert torch.equal(pairs.pseudo, (1 - source.masks.ft_mask).expand(2, -1, -1, -1))
    assert torch.allclose(pairs.j2d, data.j2d.expand(2, -1, -1))


def test_quantize_is_the_uint8_truncation_round_trip():
    x = torch.tensor([-1.0, 0.0, 0.999, 1.0])
    assert torch.allclose(O.quantize(x), torch.tensor([0, 127, 254, 255]) / 255 * 2 - 1)


def test_tuning_lowers_the_loss_and_leaves_the_bg_stream_alone(scene):
    _, _, data = scene
    g = _generator()
    bg_before = {k: v.clone() for k, v in g.bg_model.state_dict().items()}
    src_before = {k: v.clone() for k, v in g.src_model.state_dict().items()}
    err_before = _source_error(g, data)
    steps = []
    report = L.personalize(g, data, L.IMITATE, L.Budget(steps=10), batch_size=2, use_face=False, cache=False,
                           progress=lambda s, total, loss: steps.append((s, total)))
    assert report.steps == 10 and len(report.losses) == 10 and steps[-1] == (10, 10)
    assert np.mean(report.losses[-3:]) < 0.95 * np.mean(report.losses[:3])
    assert _source_error(g, data) < err_before
    assert all(torch.equal(v, g.bg_model.state_dict()[k]) for k, v in bg_before.items())
    assert any(not torch.equal(v, g.src_model.state_dict()[k]) for k, v in src_before.items())
    t = report.terms[0]
    assert t.total == pytest.approx(10 * t.cycle + 10 * t.struct + t.face + 5 * t.mask, rel=1e-5)
    assert float(torch.tensor([1e-39]) * torch.tensor([1.0])) != 0.0  # subnormal mode restored


def test_budget_defaults_to_five_official_epochs(scene):
    _, _, data = scene
    assert L.step_limit(L.IMITATE, L.Budget(), len(data.pairs), 4) == 10
    assert L.step_limit(L.IMITATE, L.Budget(), len(data.pairs), 16) == 5  # batch = min(K, bs)
    assert [L.batch_at(s, 8, 4).tolist() for s in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    report = L.tune(_generator(), data, L.IMITATE, L.Budget(steps=100, seconds=0.0))
    assert report.steps == 0


def test_cache_hit_reuses_the_tuned_weights_and_misses_on_another_source(scene, tmp_path):
    body, source, data = scene
    g1 = _generator()
    first = L.personalize(g1, data, L.IMITATE, L.Budget(steps=3), batch_size=2, use_face=False, cache_dir=tmp_path)
    assert not first.cache_hit and first.steps == 3
    g2 = _generator()
    second = L.personalize(g2, data, L.IMITATE, L.Budget(steps=3), batch_size=2, use_face=False, cache_dir=tmp_path)
    assert second.cache_hit and second.cache_key == first.cache_key and second.losses == first.losses
    sd1, sd2 = g1.state_dict(), g2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    other = source_from_tensors(body, source.image.flip(-1), source.theta, source.background)
    third = L.personalize(_generator(), P.imitate_set(body, other), L.IMITATE, L.Budget(steps=3),
                          batch_size=2, use_face=False, cache_dir=tmp_path)
    assert not third.cache_hit and third.cache_key != first.cache_key
    changed = L.personalize(_generator(), data, L.IMITATE, L.Budget(steps=3), batch_size=2, lr=1e-4, use_face=False,
                            cache_dir=tmp_path)
    assert not changed.cache_hit  # settings are part of the key


def test_face_term_runs_with_a_given_network(scene):
    _, _, data = scene
    torch.manual_seed(0)
    face = FaceLoss(Sphere20a(widths=(4, 8, 8, 8)))
    report = L.personalize(_generator(), data, L.IMITATE, L.Budget(steps=1), batch_size=2, face=face, cache=False)
    t = report.terms[0]
    assert report.face_used and t.face > 0
    assert t.total == pytest.approx(10 * t.cycle + 10 * t.struct + t.face + 5 * t.mask, rel=1e-5)  # it counts


def test_missing_sphereface_is_a_note_or_an_error(scene, tmp_path, monkeypatch):
    _, _, data = scene
    monkeypatch.chdir(tmp_path)
    for var in ("IMPERSONATE_WEIGHTS_DIR", "IMPERSONATE_WEIGHTS_REPO"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    report = L.personalize(_generator(), data, L.IMITATE, L.Budget(steps=1), batch_size=2, weights_dir=tmp_path,
                           cache=False)
    assert not report.face_used and "sphereface.safetensors" in report.notes[0]
    with pytest.raises(WeightsError, match="sphereface"):
        L.personalize(_generator(), data, L.IMITATE, L.Budget(steps=1), use_face=True, weights_dir=tmp_path,
                      cache=False)


def _literal_objective(g, source, pairs, idx, init):
    """§5.2 transcribed literally (B copies of the source through infer_front, no face term)."""
    from impersonator_cli.render.flow import warp

    b = len(idx)
    img, bg, cond_src = (t.expand(b, -1, -1, -1) for t in (source.image, source.background, source.cond))
    cond_tgt, T, Tc = pairs.cond[idx], pairs.T[idx], pairs.T_cycle[idx]
    src_in = torch.cat([img * source.masks.ft_mask, cond_src], 1)
    P_s, A_s, P_t, A_t = g.infer_front(src_in, torch.cat([pairs.warped[idx], cond_tgt], 1), T)
    fake_src, fake_tsf = A_s * bg + (1 - A_s) * P_s, A_t * bg + (1 - A_t) * P_t
    back = warp(fake_tsf, Tc)
    _, _, P_c, A_c = g.infer_front(torch.cat([fake_tsf * cond_tgt[:, 2:3], cond_tgt], 1),
                                   torch.cat([back, cond_src], 1), Tc)
    fake_cyc = A_c * bg + (1 - A_c) * P_c
    cycle = (img - fake_src).abs().mean() + (img - fake_cyc).abs().mean()
    H, body = pairs.not_back[idx], 1 - cond_src[:, 2:3]
    struct = (init - fake_tsf).abs().mean() + 2 * (img * body * H - back * H).abs().mean()
    pseudo = torch.cat([erode(cond_src[:, 2:3], 3), erode(cond_tgt[:, 2:3], 3)])
    mask = torch.nn.functional.binary_cross_entropy(torch.cat([A_s, A_t]), pseudo)
    return 10 * cycle + 10 * struct + 5 * mask


def test_objective_equals_a_literal_transcription(scene):
    """Both in float64, so summation order costs ~1e-16 relative; the LWB warps still sample in
    float32 (by design), which support/fp.lwb_tolerance bounds (2.3e-4; measured 6e-10). Gradients
    are compared as one vector: a conv weight right before an instance norm has a gradient that is
    mostly cancellation (its mean component is exactly zero), so its own relative error is no
    measure of the objective's."""
    _, source, data = scene
    data, source = to_float64(data), to_float64(source)
    pairs = data.pairs
    g = _generator().double()
    params = list(g.src_model.parameters()) + list(g.tsf_model.parameters())
    init = O.imitate_initial(g, data)
    idx = torch.tensor([2, 3])
    fast, _ = O.imitate_loss(g, data, idx, init[idx], None)
    grads = torch.cat([v.flatten() for v in torch.autograd.grad(fast, params)])
    ref = _literal_objective(g, source, pairs, idx, init[idx])
    ref_grads = torch.cat([v.flatten() for v in torch.autograd.grad(ref, params)])
    tol = lwb_tolerance(g, N, runs=4)  # two computations, forward and backward
    assert fast.dtype == torch.float64 and (fast - ref).abs() <= tol * ref
    assert (grads - ref_grads).norm() <= tol * ref_grads.norm()
