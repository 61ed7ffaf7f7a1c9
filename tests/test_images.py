"""Still-image reading/writing: alpha, 16-bit, grey, palette, EXIF orientation, WebP, bad files.

Pillow (test-only) writes the inputs and, where useful, serves as the independent reference.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from impersonator_cli.errors import InputError, OutputError
from impersonator_cli.io.images import (
    exif_orientation, is_image_path, is_video_path, read_image, read_image_rgba, write_image,
)


def marker_image(h=24, w=40) -> np.ndarray:
    """Grey image with a red block in the top-left and a blue block in the top-right."""
    img = np.full((h, w, 3), 90, np.uint8)
    img[:6, :10] = (255, 0, 0)
    img[:6, -6:] = (0, 0, 255)
    return img


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[..., 3] = np.array([0, 64, 128, 191, 255], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    a = rgba[0, :, 3].astype(float) / 255
    expected = np.rint(np.outer(a, [200, 100, 0]) + np.outer(1 - a, [255, 255, 255]))
    assert got.dtype == np.uint8 and got.shape == (4, 5, 3)
    assert np.array_equal(got[0], expected.astype(np.uint8))
    rgb, alpha = read_image_rgba(tmp_path / "a.png")
    assert np.array_equal(alpha, rgba[..., 3]) and np.array_equal(rgb, rgba[..., :3])


def test_sixteen_bit_scales_by_257_rounded(tmp_path):
    values = np.array([0, 128, 129, 257, 32767, 32896, 65407, 65535], np.uint16)
    img = np.stack([values, values[::-1], np.full_like(values, 514)], axis=1)[None]  # 1 x 8 x 3 RGB
    assert cv2.imwrite(str(tmp_path / "x.png"), img[..., ::-1])  # OpenCV writes 16-bit PNG from BGR
    got = read_image(tmp_path / "x.png")
    expected = np.floor(img.astype(float) / 257 + 0.5).astype(np.uint8)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert list(got[0, :, 0]) == [0, 0, 1, 1, 127, 128, 255, 255]


def test_sixteen_bit_rgba(tmp_path):
    img = np.zeros((2, 2, 4), np.uint16)
    img[..., 2] = 65535  # red in BGRA
    img[..., 3] = [[65535, 0], [32768, 65535]]
    assert cv2.imwrite(str(tmp_path / "x.png"), img)
    got = read_image(tmp_path / "x.png")
    assert got[0, 0].tolist() == [255, 0, 0] and got[0, 1].tolist() == [255, 255, 255]
    assert got[1, 0].tolist() == [255, 127, 127]  # half-transparent red over white


def test_greyscale_and_palette(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    got = read_image(tmp_path / "g.png")
    assert got.shape == (4, 5, 3) and all(np.array_equal(got[..., c], grey) for c in range(3))
    pal = Image.fromarray(marker_image()).convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, fmt, orientation):
    stored = Image.fromarray(marker_image())
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{fmt}"
    kw = {"quality": 95} if fmt == "jpg" else ({"lossless": True} if fmt == "webp" else {})
    stored.save(path, exif=exif.tobytes(), **kw)
    assert exif_orientation(path.read_bytes()) == orientation
    ours = read_image(path)
    with Image.open(path) as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(int) - ref).mean() < (2.0 if fmt == "jpg" else 1e-9)


def test_phone_jpeg_orientation_6_reads_upright(tmp_path):
    """Orientation 6: stored landscape, shown turned 90 degrees clockwise (a phone held upright)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(marker_image(24, 40)).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    img = read_image(tmp_path / "phone.jpg")
    assert img.shape == (40, 24, 3)
    # Turned clockwise, the stored top-left red block lands top-right, the top-right blue bottom-right.
    assert img[2, -2, 0] > 200 and img[2, -2, 2] < 60
    assert img[-2, -2, 2] > 200 and img[-2, -2, 0] < 60


def test_webp_lossless_exact(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.webp", lossless=True)
    assert np.array_equal(read_image(tmp_path / "x.webp"), img)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_bad_files_raise_input_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_missing_and_folder_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="Cannot find"):
        read_image(tmp_path / "none.jpg")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "bmp"])
def test_write_image_round_trip_is_atomic(tmp_path, ext):
    img = marker_image()
    out = write_image(tmp_path / f"out.{ext}", img)
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{ext}"]  # no partial left behind
    tol = 0 if ext in ("png", "bmp") else 6.0
    assert np.abs(read_image(out).astype(int) - img).mean() <= tol


def test_write_image_rgba_and_errors(tmp_path):
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 128
    write_image(tmp_path / "a.png", rgba)
    rgb, alpha = read_image_rgba(tmp_path / "a.png")
    assert np.array_equal(alpha, rgba[..., 3]) and np.array_equal(rgb, rgba[..., :3])
    with pytest.raises(OutputError):
        write_image(tmp_path / "a.gif", rgba[..., :3])
    with pytest.raises(OutputError):
        write_image(tmp_path / "missing" / "a.png", rgba)


def test_path_kinds():
    assert is_image_path("a/B.JPG") and is_image_path("x.webp") and not is_image_path("x.mp4")
    assert is_video_path("clip.MOV") and is_video_path("c.mkv") and not is_video_path("x.png")
