"""Several photos of one person: a front and a back photo cover a turned-around target better."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from impersonator_cli.api import Impersonator, SourceOptions
from impersonator_cli.pipeline.rig import load_body_model
from impersonator_cli.body.motion import MotionData, save_motion
from impersonator_cli.body.tracking import padded_frame_box
from impersonator_cli.body.rotation import upright_turned
from impersonator_cli.demo.world import MannequinPhotographer, a_pose
from impersonator_cli.io.images import read_image, write_image
from impersonator_cli.render.body_view import view_body
from impersonator_cli.io.video import read_frames

N = 256
CAM = np.array([1.0, 0.0, 0.2])


def turned(yaw_deg):
    pose = a_pose(60)
    pose[:3] = upright_turned(math.radians(yaw_deg))
    return pose


def one_frame(path, pose):
    motion = MotionData(cams=CAM[None], poses=pose[None], shapes=np.zeros((1, 10)),
                        boxes=padded_frame_box(N, N)[None], fps=25, frame_size=(N, N), content_hash="0" * 64)
    return save_motion(path, motion)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, demo_world):
    root = tmp_path_factory.mktemp("multi")
    (root / "assets").symlink_to(demo_world.files.weights_dir, target_is_directory=True)  # read only
    body = load_body_model(root / "assets")
    cam = MannequinPhotographer(body)
    half = cam.texture.shape[-1] // 2
    cam.texture[:, :, half:] = 1 - cam.texture[:, :, half:]  # the back chart (u > 0.5) in other colours
    out = {}
    for name, yaw in (("front", 0), ("back", 180), ("target", 160)):
        write_image(root / f"{name}.png", cam.photo(CAM, turned(yaw), N))
        out[name] = (root / f"{name}.png", one_frame(root / f"{name}.motion.npz", turned(yaw)))
    return root, body, out


def test_front_and_back_sources_reproduce_a_turned_target_better(photos):
    root, body, files = photos
    imp = Impersonator(weights_dir=root / "assets", device="cpu", generator="none")
    prep = {k: imp.prepare(files[k][0], smpl=files[k][1], options=SourceOptions(crop="full", background="black")) for k in ("front", "back")}
    truth = read_image(files["target"][0]).astype(float)
    theta = torch.from_numpy(np.concatenate([CAM, turned(160), np.zeros(10)])[None]).float()
    mask = view_body(body.smpl, theta[:, :3], theta[:, 3:75], theta[:, 75:], N).raster.foreground[0].numpy()
    errors = {}
    for label, sources in (("front", [prep["front"]]), ("both", [prep["front"], prep["back"]])):
        out = root / f"{label}.mp4"
        imp.imitate(sources, files["target"][1], out, overwrite=True)
        with read_frames(out) as frames:
            frame = next(iter(frames)).astype(float)
        errors[label] = np.abs(frame - truth)[mask].mean()
    # Seen from behind, the front photo alone can only paint the back with front colours.
    assert errors["both"] < 0.3 * errors["front"], errors  # measured: 16 vs 106 grey levels
