"""Motion files: exact round trip, refusal of damaged files, content hash, extraction end to end."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest
import torch

from impersonator_cli.body import motion as mo
from impersonator_cli.body import smoothing
from impersonator_cli.demo.mannequin import mannequin_arrays
from impersonator_cli.body.smpl import SMPL
from impersonator_cli.errors import InputError, OutputError
from impersonator_cli.io.images import write_image

try:
    from . import media
    from . import test_tracking as tt
except ImportError:
    from support import media as media
    import test_tracking as tt


@pytest.fixture(scope="module")
def smpl():
    return SMPL(mannequin_arrays()).double()


def sample_motion(frames: int = 7) -> mo.MotionData:
    rng = np.random.default_rng(3)
    return mo.MotionData(
        cams=rng.normal(size=(frames, 3)) + [1, 0, 0], poses=rng.normal(size=(frames, 72)),
        shapes=rng.normal(size=(frames, 10)), boxes=rng.uniform(10, 200, (frames, 3)),
        fps=Fraction(30000, 1001), frame_size=(640, 360), content_hash=hashlib.sha256(b"x").hexdigest(),
        missing=(0, 4), smooth_sigma=1.5, start=2.5, source_name="dance.mp4")


def assert_same(a: mo.MotionData, b: mo.MotionData) -> None:
    for name in ("cams", "poses", "shapes", "boxes"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y)
    for name in ("fps", "frame_size", "content_hash", "missing", "smooth_sigma", "start", "source_name",
                 "version", "frame_count"):
        assert getattr(a, name) == getattr(b, name), name


def test_round_trip_is_exact_and_atomic(tmp_path):
    m = sample_motion()
    out = mo.save_motion(tmp_path / "d.motion.npz", m)
    assert [p.name for p in tmp_path.iterdir()] == ["d.motion.npz"]  # no temp file left behind
    back = mo.load_motion(out)
    assert_same(back, m)
    assert back.fps == Fraction(30000, 1001) and back.frame_count == 7 and back.missing == (0, 4)
    assert np.array_equal(back.thetas, np.concatenate([m.cams, m.poses, m.shapes], 1))


def test_save_refuses_to_replace_unless_asked(tmp_path):
    path = tmp_path / "d.motion.npz"
    mo.save_motion(path, sample_motion(3))
    with pytest.raises(OutputError, match="already exists"):
        mo.save_motion(path, sample_motion(5))
    mo.save_motion(path, sample_motion(5), overwrite=True)
    assert mo.load_motion(path).frame_count == 5


def _resave(path, **changes) -> None:
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with open(path, "wb") as handle:
        np.savez(handle, **data)


BAD = {
    "newer version": dict(version=np.array(2, np.int64)),
    "no version": dict(version=None),
    "missing key": dict(shapes=None),
    "bad shape": dict(poses=np.zeros((7, 71), np.float32)),
    "wrong dtype": dict(cams=np.ones((7, 3), np.float64)),
    "too few boxes": dict(boxes=np.ones((6, 3), np.float32)),
    "not finite": dict(cams=np.full((7, 3), np.nan, np.float32)),
    "frame count": dict(frame_count=np.array(8, np.int64)),
    "missing index": dict(missing=np.array([3, 7], np.int64)),
    "pickled object": dict(missing=np.array([{"a": 1}], dtype=object)),
    "bad hash": dict(content_hash=np.array("abc")),
    "zero fps": dict(fps=np.array([0, 1], np.int64)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_files_raise_input_error(tmp_path, case):
    path = mo.save_motion(tmp_path / "bad.motion.npz", sample_motion())
    _resave(path, **BAD[case])
    with pytest.raises(InputError) as info:
        mo.load_motion(path)
    text = str(info.value)
    assert "bad.motion.npz" in text and "impersonate motion extract" in text
    if "version" in case:
        assert "version" in text


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "absent"])
def test_damaged_files_raise_input_error(tmp_path, damage):
    path = mo.save_motion(tmp_path / "d.motion.npz", sample_motion())
    raw = path.read_bytes()
    if damage == "absent":
        path.unlink()
    else:
        path.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x00PK" * 99, "empty": b""}[damage])
    with pytest.raises(InputError, match="motion extract") as info:
        mo.load_motion(path)
    assert "d.motion.npz" in str(info.value)


def test_content_hash_of_files_and_folders(tmp_path):
    clip = tmp_path / "clip.bin"
    clip.write_bytes(bytes(range(256)) * 10)
    assert mo.content_hash(clip) == hashlib.sha256(clip.read_bytes()).hexdigest()
    data = bytearray(clip.read_bytes())
    data[1000] ^= 1
    clip.write_bytes(bytes(data))
    assert mo.content_hash(clip) != hashlib.sha256(bytes(range(256)) * 10).hexdigest()

    folder = tmp_path / "frames"
    folder.mkdir()
    images = [np.full((4, 5, 3), v, np.uint8) for v in (10, 20, 30)]
    for i, img in enumerate(images):
        write_image(folder / f"f{i + 1}.png", img)
    first = mo.content_hash(folder)
    assert first == hashlib.sha256(b"".join(
        hashlib.sha256((folder / f"f{i}.png").read_bytes()).digest() for i in (1, 2, 3))).hexdigest()
    (folder / "f1.png").rename(folder / "f01.png")  # same frames, same order: same motion
    assert mo.content_hash(folder) == first
    write_image(folder / "f2.png", images[2])  # one frame changes
    assert mo.content_hash(folder) != first


def _write_frames(folder, count: int) -> None:
    folder.mkdir()
    for t in range(count):
        write_image(folder / f"{t:04d}.png", tt.encoded_frame(t))


def test_extract_motion_from_an_image_folder(tmp_path, smpl):
    folder = tmp_path / "frames"
    _write_frames(folder, 8)
    jitter = np.random.default_rng(5).uniform(-4, 4, (8, 2))
    cams_px = tt.pixel_cams(np.array([[90.0, 80.0]]) + jitter)
    oracle = tt.Oracle(cams_px, empty={2})
    seen = []
    m = mo.extract_motion(folder, oracle, smpl, batch_size=3, progress=lambda d, n: seen.append((d, n)))
    assert seen == [(3, 8), (6, 8), (8, 8)]
    assert m.frame_count == 8 and m.missing == (2,) and m.fps == Fraction(25) and m.frame_size == (tt.W, tt.H)
    assert m.content_hash == mo.content_hash(folder) and m.smooth_sigma == 0 and m.source_name == "frames"
    truth = tt.truth_pixels(smpl, cams_px)
    got = tt.track_pixels(smpl, m)
    assert np.abs(got[[0, 1, 3, 4, 5, 6, 7]] - truth[[0, 1, 3, 4, 5, 6, 7]]).max() < 0.25
    assert np.array_equal(m.cams[2], m.cams[1])
    assert np.allclose(m.poses, tt.body_pose().float().numpy()[None], atol=1e-6)  # no smoothing by default

    smooth = mo.extract_motion(folder, oracle, smpl, batch_size=3, smooth_sigma=1.5)
    assert smooth.smooth_sigma == 1.5
    assert np.allclose(smooth.cams, smoothing.smooth_cameras(m.cams.astype(np.float64), 1.5), atol=1e-5)
    assert np.abs(smooth.cams - m.cams)[:, 1:].max() > 1e-3  # the jitter was really smoothed
    assert np.allclose(smooth.boxes, m.boxes)

    part = mo.extract_motion(folder, oracle, smpl, start=0.12, max_frames=4)  # 3 frames in at 25 fps
    assert part.frame_count == 4 and part.start == 0.12 and part.missing == ()
    assert np.abs(tt.track_pixels(smpl, part) - truth[3:7]).max() < 0.25  # frames 3..6
    out = mo.save_motion(tmp_path / "x.motion.npz", part)
    assert_same(mo.load_motion(out), part)


class CentredBody:
    """θ of a body in the middle of whatever crop it is given (a video's pixels are ignored; not a
    consistent person, so only the video plumbing is checked with it)."""

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        theta = torch.cat([torch.tensor([0.9, 0.0, 0.1], dtype=torch.float64), tt.body_pose(), tt.BETAS])
        return theta[None].repeat(crops.shape[0], 1).float()


def test_extract_motion_from_a_video(tmp_path, smpl):
    clip = media.make_clip(tmp_path / "clip.mp4", size=(64, 48), frames=8, audio=False)
    m = mo.extract_motion(clip, CentredBody(), smpl, batch_size=4)
    assert m.frame_count == 8 and m.fps == Fraction(30000, 1001) and m.frame_size == (64, 48)
    assert m.content_hash == hashlib.sha256(clip.read_bytes()).hexdigest() and m.missing == ()
    assert np.isfinite(m.thetas).all() and (m.cams[:, 0] > 0).all()
    with pytest.raises(InputError, match="No person found") as info:
        mo.extract_motion(clip, lambda crops: torch.full((crops.shape[0], 85), float("nan")), smpl)
    assert "clip.mp4" in str(info.value)
