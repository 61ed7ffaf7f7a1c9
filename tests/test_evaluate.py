"""iPER protocol reading, SSIM / PSNR against independent references, and a small evaluation run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from impersonator_cli.train import metrics
from impersonator_cli.pipeline.rig import load_body_model
from impersonator_cli.errors import InputError
from impersonator_cli.train.evaluate import (
    EvalReport, GeneratorPredictor, evaluate_self_imitation, format_table, read_protocol, self_imitation_runs,
    write_report,
)
from impersonator_cli.gan.blocks import init_weights
from impersonator_cli.gan.generator import LiquidWarpingGenerator, Synthesis
from impersonator_cli.train.dataset import load_video
from test_train import make_mannequin_layout

C1, C2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2


def ssim_loops(x: np.ndarray, y: np.ndarray, win: int = 7, data_range: float = 2.0) -> float:
    """Slow reference: every fully-inside 7x7 window, sample (co)variances, channels averaged."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - win + 1):
            for j in range(x.shape[2] - win + 1):
                a, b = x[c, i:i + win, j:j + win].ravel(), y[c, i:i + win, j:j + win].ravel()
                va, vb = a.var(ddof=1), b.var(ddof=1)
                cov = ((a - a.mean()) * (b - b.mean())).sum() / (a.size - 1)
                vals.append((2 * a.mean() * b.mean() + c1) * (2 * cov + c2)
                            / ((a.mean() ** 2 + b.mean() ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_identical_images_give_ssim_1_and_infinite_psnr():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.isinf(metrics.psnr(x, x)).all()
    assert metrics.json_number(float("inf")) == "inf" and metrics.json_number(None) is None
    assert json.loads(json.dumps(metrics.json_number(metrics.psnr(x, x)[0].item()))) == "inf"


def test_psnr_of_known_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 256, 256, generator=g, dtype=torch.float64) * 1.6 - 0.8
    a = 0.1
    sign = a * ((torch.rand(x.shape, generator=g) < 0.5).double() * 2 - 1)
    assert metrics.psnr(x, x + sign).item() == pytest.approx(10 * math.log10(4 / a ** 2), abs=1e-9)
    uniform = (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * a
    expected = 10 * math.log10(4 / (a ** 2 / 3))  # MSE of U(-a, a) is a^2 / 3
    assert metrics.psnr(x, x + uniform).item() == pytest.approx(expected, abs=0.03)


def test_ssim_of_constant_images_by_hand():
    a, c = 0.2, 0.5  # constant a against constant a + c: no variance, only the luminance term
    x, y = torch.full((1, 3, 9, 9), a), torch.full((1, 3, 9, 9), a + c)
    hand = (2 * a * (a + c) + C1) / (a * a + (a + c) ** 2 + C1)
    assert metrics.ssim(x, y).item() == pytest.approx(hand, rel=1e-6)


def test_ssim_matches_the_window_loop_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 2, 12, 13, generator=g, dtype=torch.float64) * 2 - 1
    y = (0.6 * x + 0.3 * torch.rand(x.shape, generator=g, dtype=torch.float64) + 0.1).clamp(-1, 1)
    assert metrics.ssim(x, y).item() == pytest.approx(ssim_loops(x[0].numpy(), y[0].numpy()),
                                                      abs=1e-12)
    # A constant offset keeps the structure term at 1: only luminance changes.
    z = x + 0.25
    mu = torch.nn.functional.avg_pool2d(x, 7, stride=1)
    lum = ((2 * mu * (mu + 0.25) + C1) / (mu ** 2 + (mu + 0.25) ** 2 + C1)).mean()
    assert metrics.ssim(x, z).item() == pytest.approx(lum.item(), abs=1e-12)


def _protocol(vid: str, sources: list[str], rng=(3, 9)) -> dict:
    """One video in the official iPER_protocol.json structure."""
    return {"val": {vid: {
        "source": sources + ["017.jpg"], "view angle": [0, 45, 90, 135, 180, 225, 270, 315],
        "s_n": {"1": sources[:1], "2": sources[:2], "3": sources[:3], "4": sources[:3],
                "8": sources},
        "mask": [], "novel view": False,
        "self_imitation": {"target": vid, "range": list(rng)},
        "cross_imitation": {"target": "007/1/2", "range": [0, 6]}, "flag": [10, 16]}}}


def test_protocol_reader_accepts_the_official_format(tmp_path):
    path = tmp_path / "iPER_protocol.json"
    path.write_text(json.dumps(_protocol("001/9/1", ["000.jpg", "011.jpg", "023.jpg"])))
    proto = read_protocol(path)
    info = proto["001/9/1"]
    assert info.self_imitation.target == "001/9/1" and info.self_imitation.range == (3, 9)
    assert info.cross_imitation.target == "007/1/2" and info.flag == (10, 16)
    assert self_imitation_runs(proto) == [("001/9/1", n) for n in ("000.jpg", "011.jpg", "023.jpg")]
    path.write_text(json.dumps({"val": {"x": {"source": []}}}))
    with pytest.raises(InputError, match="self_imitation"):
        read_protocol(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory, demo_world):
    base = tmp_path_factory.mktemp("eval")
    (base / "assets").symlink_to(demo_world.files.weights_dir, target_is_directory=True)  # read only
    make_mannequin_layout(base / "data", n_videos=1, n_frames=12)
    return base


def test_oracle_and_generator_runs(data, tmp_path):
    vid = "000/1/1"
    proto_path = tmp_path / "p.json"
    proto_path.write_text(json.dumps(_protocol(vid, ["00.png", "04.png"], rng=(2, 7))))
    proto = read_protocol(proto_path)
    video = load_video(data / "data", vid)

    def oracle(src_img, src_smpl, tgt_smpls):  # looks up the ground truth by SMPL row
        rows = [int(np.argmin(np.abs(video.smpls - s.numpy()).sum(1))) for s in tgt_smpls]
        from impersonator_cli.train.dataset import load_frame
        return torch.from_numpy(np.stack([load_frame(video.frames[r], 64) for r in rows]))

    report = evaluate_self_imitation(oracle, proto, data / "data", image_size=64)
    assert [r.frames for r in report.runs] == [6, 6]
    assert all(r.ssim == pytest.approx(1.0) and math.isinf(r.psnr) for r in report.runs)
    assert report.to_json()["summary"]["psnr"] == "inf" and "LPIPS" in report.notes[0]

    torch.manual_seed(0)
    G = init_weights(LiquidWarpingGenerator(conv_dim=8, repeat_num=1))
    body = load_body_model(data / "assets")
    predictor = GeneratorPredictor(G, body.smpl, body.maps, batch_size=4)
    report = evaluate_self_imitation(predictor, proto, data / "data", image_size=64)
    ssim = [r.ssim for r in report.runs]
    assert all(-1 < s < 0.9 for s in ssim) and all(5 < r.psnr < 40 for r in report.runs)
    written = json.loads(write_report(report, tmp_path / "r.json").read_text())
    assert written["summary"]["ssim"] == pytest.approx(np.mean(ssim))
    table = format_table(report)
    assert "mean" in table and "n/a" in table  # LPIPS column without weights


def test_generator_predictor_warps_the_source_on_an_unchanged_pose(data):
    """With attention forced to 0 and colour = I_syn, the predictor returns the warped source:
    a target with the source's own SMPL must then reproduce the source image on the body."""
    body = load_body_model(data / "assets")
    video = load_video(data / "data", "000/1/1")

    class Passthrough(LiquidWarpingGenerator):
        def swap(self, tsf_in, feats_list, flows_list):
            return Synthesis(tsf_in[:, :3], torch.zeros_like(tsf_in[:, :1]))

    G = Passthrough(conv_dim=8, repeat_num=1)
    from impersonator_cli.train.dataset import load_frame
    src = torch.from_numpy(load_frame(video.frames[3], 64))
    smpl = torch.from_numpy(video.smpls[3])
    out = GeneratorPredictor(G, body.smpl, body.maps)(src, smpl, smpl[None])
    body_px = out[0].abs().sum(0) > 0
    assert body_px.float().mean() > 0.05
    assert (out[0] - src).abs()[:, body_px].mean() < 0.08


def test_empty_report_table():
    assert "mean" in format_table(EvalReport())
