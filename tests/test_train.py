"""Training on a small iPER-layout data set of mannequin renders (N = 64, tiny widths, CPU)."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from impersonator_cli.demo.mannequin import mannequin_arrays
from impersonator_cli.demo.mannequin_assets import mannequin_texture, mannequin_uv
from impersonator_cli.pipeline.rig import load_body_model
from impersonator_cli.body.smpl import SMPL
from impersonator_cli.errors import InputError, WeightsError
from impersonator_cli.render.flow import erode, identity_grid
from impersonator_cli.gan.generator import LiquidWarpingGenerator
from impersonator_cli.io.images import write_image
from impersonator_cli.render.body_view import view_body
from impersonator_cli.render.texture import face_corner_uv, render_texture
from impersonator_cli.train.dataset import (
    EpochSampler, IPerDataset, InputBuilder, load_frame, read_pose_shape, write_pose_shape,
)
from impersonator_cli.train.run import train
from impersonator_cli.train.trainer import LinearDecay, TrainConfig, Trainer

N = 64
FRAMES = 20


def _upright_turn(t: float) -> np.ndarray:
    """Axis-angle of R = Rx(pi) Ry(t): upright in the y-down image, turned by t."""
    c, s = math.cos(t), math.sin(t)
    R = np.diag([1.0, -1.0, -1.0]) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    angle = math.acos(np.clip((np.trace(R) - 1) / 2, -1, 1))
    if abs(angle - math.pi) < 1e-6:
        axis = np.sqrt(np.clip((np.diag(R) + 1) / 2, 0, None))
        axis[1:] *= np.sign(R[0, 1:] + 1e-30)
        return axis * angle
    return np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (
        2 * math.sin(angle)) * angle


def make_mannequin_layout(root: Path, n_videos: int = 2, n_frames: int = FRAMES, size: int = N):
    """images/<vid>/NN.png + smpls/<vid>/pose_shape.pkl of a textured mannequin whose pose changes
    every frame, in front of a per-video colour gradient; train.txt = all, val.txt = the last."""
    smpl = SMPL(mannequin_arrays()).float()
    vt, face_vt = mannequin_uv()
    corner_uv = face_corner_uv(torch.from_numpy(vt).float(), torch.from_numpy(face_vt))
    texture = torch.from_numpy(mannequin_texture(128)).permute(2, 0, 1).float() / 255
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    names = []
    for v in range(n_videos):
        name = f"{v:03d}/1/1"
        names.append(name)
        k = np.arange(n_frames)
        pose = np.zeros((n_frames, 72), np.float32)
        pose[:, :3] = [_upright_turn(0.4 * math.sin(i / 3 + v)) for i in k]
        pose[:, 16 * 3 + 2] = -0.6 * np.sin(k / 2.5 + v)  # left shoulder
        pose[:, 17 * 3 + 2] = 0.5 * np.sin(k / 3.0)  # right shoulder
        pose[:, 4 * 3] = 0.4 * np.abs(np.sin(k / 4))  # left knee
        cams = np.tile(np.array([[0.85, 0.0, 0.15]], np.float32), (n_frames, 1))
        cams[:, 1] = 0.05 * np.sin(k / 5)
        shape = np.zeros((n_frames, 10), np.float32)
        view = view_body(smpl, torch.from_numpy(cams), torch.from_numpy(pose),
                         torch.from_numpy(shape), size)
        bg = torch.stack([0.3 + 0.4 * xx, 0.5 + 0.2 * yy + 0.1 * v, 0.6 - 0.3 * xx * yy])
        imgs = render_texture(view.raster, corner_uv, texture, bg.expand(n_frames, -1, -1, -1))
        folder = root / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in k:
            rgb = (imgs[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            write_image(folder / f"{i:02d}.png", rgb)
        write_pose_shape(root / "smpls" / name / "pose_shape.pkl", cams, pose, shape)
    (root / "train.txt").write_text("\n".join(names) + "\n")
    (root / "val.txt").write_text(names[-1] + "\n")
    return names


@pytest.fixture(scope="module")
def layout(tmp_path_factory, demo_world):
    """base/data: the iPER layout; base/assets: the shared demo world's mannequin assets (read only)."""
    base = tmp_path_factory.mktemp("iper")
    (base / "assets").symlink_to(demo_world.files.weights_dir, target_is_directory=True)
    make_mannequin_layout(base / "data")
    return base


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread, and far slower on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(layout: Path, out: Path, **kw) -> TrainConfig:
    cfg = TrainConfig(data_root=str(layout / "data"), output_dir=str(out),
                      weights_dir=str(layout / "assets"), image_size=N, batch_size=2, conv_dim=8,
                      repeat_num=1, ndf=8, use_vgg=False, use_face=False, num_workers=0,
                      log_every=1, seed=3)
    return replace(cfg, **kw)


# ------------------------------------------------------------------------------ data

def test_pose_shape_roundtrip_and_code_refused(tmp_path):
    cams, pose, shape = np.ones((3, 3)), np.arange(216.0).reshape(3, 72), np.zeros((3, 10))
    data = read_pose_shape(write_pose_shape(tmp_path / "ok.pkl", cams, pose, shape))
    assert np.array_equal(data["pose"], pose.astype(np.float32)) and data["cams"].shape == (3, 3)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"cams": Evil()}, protocol=2))
    with pytest.raises(InputError, match="not a pickle of numpy arrays"):
        read_pose_shape(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


def test_official_pair_sampling(layout):
    ds = IPerDataset(layout / "data", image_size=N, seed=1)
    assert len(ds) == 2 * (FRAMES // 10)
    pairs = [ds.pair(i, epoch=e) for e in range(30) for i in range(len(ds))]
    assert all(v == i % 2 for (v, _, _), i in zip(pairs, list(range(len(ds))) * 30))
    assert max(s for _, s, _ in pairs) <= 14 and max(t for _, _, t in pairs) > 14
    assert ds.pair(3, epoch=7) == ds.pair(3, epoch=7)  # reproducible
    assert len({ds.pair(1, e) for e in range(30)}) > 5  # fresh draws every epoch
    item = ds[(1, 4)]
    assert item["images"].shape == (2, 3, N, N) and item["smpls"].shape == (2, 85)
    assert -1 <= item["images"].min() and item["images"].max() <= 1
    s, t = item["frames"].tolist()
    assert torch.allclose(item["smpls"][1, 3:75], torch.from_numpy(ds.videos[1].smpls[t, 3:75]))
    sampler = EpochSampler(ds, num_replicas=1, rank=0, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, skip=2)
    assert list(sampler) == full[2:] and all(e == 2 for _, e in full)


def test_inputs_follow_the_geometry(layout):
    body = load_body_model(layout / "assets")
    ds = IPerDataset(layout / "data", image_size=N)
    video = ds.videos[0]
    images = torch.stack([torch.from_numpy(np.stack([load_frame(video.frames[k], N) for k in pair]))
                          for pair in ((5, 5), (2, 9))])
    smpls = torch.from_numpy(np.stack([video.smpls[[5, 5]], video.smpls[[2, 9]]]))
    x = InputBuilder(body.smpl, body.maps)(images, smpls)
    body_px = x.cond_tgt[:, 2] == 0
    # Same frame as source and target: T is the renderer's pixel-centre grid on the body.
    expected = (identity_grid(N) * (N - 1) / N)[0]
    assert torch.allclose(x.T[0][body_px[0]], expected[body_px[0]], atol=1e-4)
    assert (x.T[~body_px] == -2).all()
    # Attention targets and masks: erosions of the background indicator with 3 and 15.
    bg_src = x.src_in[:, 5:6]  # cond_src channel 2
    assert torch.equal(x.mask_targets[:, :1], erode(bg_src, 3))
    assert torch.equal(x.bg_in[:, 3:], erode(bg_src, 15))
    assert torch.equal(x.bg_in[:, :3], x.src_img * x.bg_in[:, 3:])
    assert (x.bg_in[:, 3:] <= x.mask_targets[:, :1]).all()  # the larger erosion is inside
    # I_syn on the body reproduces the target (same frame, pixel-centre flow, < 1/2 px shift).
    syn = x.tsf_in[0, :3]
    inner = erode(x.cond_tgt[:1, 2:3], 1)[0, 0] == 0
    assert (syn - x.tgt_img[0]).abs()[:, inner].mean() < 0.08
    # The head box holds the target's head joints (top of the image, narrow).
    x0, y0, x1, y1 = x.head_boxes[1].tolist()
    assert 0 <= x0 < x1 <= N and 0 <= y0 < y1 < N // 2 and x1 - x0 < N // 3


def test_lr_schedule_is_official():
    f = LinearDecay(5, 25, 2e-6 / 2e-4)
    lrs = [2e-4 * f(k) for k in range(31)]
    assert lrs[:6] == [2e-4] * 6
    assert lrs[6] == pytest.approx(2e-4 - (2e-4 - 2e-6) / 25)
    assert lrs[30] == pytest.approx(2e-6) and f(31) == f(30)  # stays at final_lr


# ------------------------------------------------------------------------------ training

def test_training_lowers_reconstruction_loss(layout, tmp_path, one_thread):
    records = []
    cfg = small_config(layout, tmp_path / "run", max_steps=20, epochs_no_decay=20)
    result = train(cfg, log=records.append)
    rec = [r["g_rec"] for r in records]
    assert len(rec) == 20 and result.steps == 20
    assert np.mean(rec[-5:]) < 0.85 * np.mean(rec[:5])  # 0.51-0.70 over seeds 3, 5, 7
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == list(range(1, 21))
    assert all(math.isfinite(r["d_total"]) and r["g_face"] == 0 for r in records)


def test_resume_reproduces_the_next_step_exactly(layout, tmp_path, one_thread):
    full, part = [], []
    cfg = small_config(layout, tmp_path / "a", max_steps=3)
    train(cfg, log=full.append)
    cfg_b = replace(cfg, output_dir=str(tmp_path / "b"), max_steps=2)
    train(cfg_b, log=part.append)
    train(replace(cfg_b, max_steps=3), resume=tmp_path / "b" / "resume.pt", log=part.append)
    assert [r["step"] for r in part] == [1, 2, 3]
    keys = [k for k in full[2] if k.startswith(("g_", "d_"))]
    assert [full[2][k] for k in keys] == [part[2][k] for k in keys]
    a = torch.load(tmp_path / "a" / "resume.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "resume.pt", weights_only=True)
    for net in ("G", "D"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net])
    assert a["global_step"] == b["global_step"] == 3 and a["epoch"] == 1
    assert set(b["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    # Epoch 1 (two steps) wrote the official files: plain state dicts that load strictly.
    sd = torch.load(tmp_path / "b" / "net_epoch_1_id_G.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in sd)
    LiquidWarpingGenerator(conv_dim=8, repeat_num=1).load_state_dict(sd, strict=True)
    assert (tmp_path / "b" / "opt_epoch_1_id_D.pth").is_file()


def test_missing_vgg_weights_are_named(layout, tmp_path):
    cfg = small_config(layout, tmp_path / "x", use_vgg=True, max_steps=1)
    with pytest.raises(WeightsError, match="vgg19.*--no-vgg"):
        train(cfg)


@pytest.mark.slow  # two processes start, each importing torch, then DDP over gloo
def test_two_processes_under_torchrun_stay_in_sync(layout, tmp_path, one_thread):
    sums = tmp_path / "sums"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", "-m", "impersonator_cli.train", str(layout / "data"),
           "-o", str(tmp_path / "ddp"), "--weights-dir", str(layout / "assets"),
           "--image-size", str(N), "--batch-size", "1", "--conv-dim", "8", "--repeat-num", "1",
           "--ndf", "8", "--no-vgg", "--no-face", "--num-workers", "0", "--max-steps", "2",
           "--seed", "3", "--device", "cpu", "--checksum-dir", str(sums)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((sums / f"checksum_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 2
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    body = load_body_model(layout / "assets")
    cfg = small_config(layout, tmp_path / "init")
    initial = Trainer(cfg, InputBuilder(body.smpl, body.maps), torch.device("cpu")).checksum()
    assert ranks[0]["checksum"] != initial  # the weights did move
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 2


# ------------------------------------------------------------------------------ layout builder

def test_build_layout_from_frames_and_motion_files(layout, tmp_path):
    """Non-square frames (the middle 48 columns of 64 x 64 renders) + motion files whose cameras
    are frame-normalized: the written 64 x 64 images are the letterboxed frames, and the written
    cameras still put the body where the image shows it."""
    from fractions import Fraction

    from impersonator_cli.body.motion import MotionData, save_motion
    from impersonator_cli.io.images import read_image
    from impersonator_cli.train.build_layout import build_layout

    src = IPerDataset(layout / "data", image_size=N).videos[0]
    videos, motions = tmp_path / "videos", tmp_path / "motions"
    motions.mkdir()
    for clip in ("clip_a", "clip_b"):
        (videos / clip).mkdir(parents=True)
        for i in range(10):
            write_image(videos / clip / f"{i:03d}.png", read_image(src.frames[i])[:, 8:56])
        save_motion(motions / f"{clip}.motion.npz", MotionData(
            cams=src.smpls[:10, :3], poses=src.smpls[:10, 3:75], shapes=src.smpls[:10, 75:],
            boxes=np.tile([[24.0, 32.0, 64.0]], (10, 1)), fps=Fraction(25), frame_size=(48, 64),
            content_hash="0" * 64))
    split = build_layout(videos, tmp_path / "out", motions=motions, size=N, val_fraction=0.5)
    assert sorted(split["train"] + split["val"]) == ["clip_a", "clip_b"] and len(split["val"]) == 1
    ds = IPerDataset(tmp_path / "out", split="train", image_size=N)
    video = ds.videos[0]
    assert [p.name for p in video.frames][:2] == ["00.jpg", "01.jpg"]  # digits of the count (10)
    assert np.allclose(video.smpls, src.smpls[:10])
    img = read_image(video.frames[4]).astype(float)
    ref = read_image(src.frames[4]).astype(float)
    assert img[:, :7].max() < 30 and img[:, 57:].max() < 30  # letterbox bars
    assert np.abs(img[:, 9:55] - ref[:, 9:55]).mean() < 6  # JPEG of the same pixels


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_on_cuda(layout, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    records = []
    cfg = small_config(layout, tmp_path / precision, max_steps=6, device="cuda",
                       precision=precision, epochs_no_decay=20)
    train(cfg, log=records.append)
    assert all(math.isfinite(r["g_total"]) and math.isfinite(r["d_total"]) for r in records)
    assert np.mean([r["g_rec"] for r in records[-2:]]) < np.mean([r["g_rec"] for r in records[:2]])
