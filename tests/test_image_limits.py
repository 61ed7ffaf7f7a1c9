"""Never silently wrong (issue 13): images whose header claims an absurd size, and photos without a person.

- An image is measured from its header before OpenCV decodes it: one claiming more than
  `defaults.MAX_IMAGE_PIXELS` is an InputError (exit 3) naming the limit, the claimed size and the
  file; the decoder is never called, so nothing is allocated for the claimed size and no raw
  libpng/libjpeg/OpenCV line reaches the process's stderr (checked at the fd level with capfd).
- "No person found" names the role of the image that has none: the source or reference photo, not
  "the driver".
"""

from __future__ import annotations

import resource
import struct
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from support.cli import run_cli

from impersonator_cli.body import tracking
from impersonator_cli.body.smpl import SMPL
from impersonator_cli.defaults import MAX_IMAGE_PIXELS
from impersonator_cli.demo.mannequin import mannequin_arrays
from impersonator_cli.errors import InputError
from impersonator_cli.io import images
from impersonator_cli.io.image_header import image_header
from impersonator_cli.io.images import read_image, write_image
from impersonator_cli.pipeline.source import prepare_source

# --------------------------------------------------------------------------------------------- forged headers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def forged_png(width: int, height: int) -> bytes:
    """A valid PNG signature, an IHDR (correct CRC) claiming width x height RGB, a tiny IDAT, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def forged_jpeg(width: int, height: int) -> bytes:
    """SOI, a JFIF APP0, a baseline SOF0 claiming width x height (3 components), a bit of scan, EOI."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + app0 + sof + sos + b"\x00" * 32 + b"\xff\xd9"


def forged_webp(width: int, height: int) -> bytes:
    """RIFF/WEBP with a VP8X chunk claiming a width x height canvas (24-bit sizes minus one)."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def forged_bmp(width: int, height: int) -> bytes:
    """A BITMAPINFOHEADER claiming width x height (top-down: negative height), 24 bits, no pixels."""
    dib = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(dib), 0, 0, 14 + len(dib)) + dib


FORGED = {  # name -> (file name, bytes, claimed width, height)
    "png 100000": ("huge.png", forged_png(100000, 100000), 100000, 100000),
    "png 30000": ("big.png", forged_png(30000, 30000), 30000, 30000),
    "jpeg 65000": ("huge.jpg", forged_jpeg(65000, 65000), 65000, 65000),
    "webp vp8x": ("huge.webp", forged_webp(1 << 20, 1 << 20), 1 << 20, 1 << 20),
    "bmp": ("huge.bmp", forged_bmp(40000, 30000), 40000, 30000),
    "gif": ("huge.gif", b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00;", 65535, 65535),
    "tiff": ("huge.tif", b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHII", 256, 4, 1, 70000)
             + struct.pack("<HHII", 257, 4, 1, 70000) + b"\x00" * 4, 70000, 70000),
    "pnm": ("huge.ppm", b"P6\n# forged\n50000 50000\n255\n" + b"\x00" * 12, 50000, 50000),
}


def _no_decoding(*_args, **_kwargs):
    raise AssertionError("the decoder was called for an image refused by its header")


def _decoding_all_but(data: bytes):
    """cv2.imdecode that fails the test when given `data` (other images decode as usual)."""
    real = cv2.imdecode

    def imdecode(buf, flags):
        if bytes(np.asarray(buf)[:len(data)]) == data:
            _no_decoding()
        return real(buf, flags)

    return imdecode


def assert_limit_paragraph(text: str, path, width: int, height: int) -> None:
    assert f"{width} x {height}" in text and f"{MAX_IMAGE_PIXELS:,}" in text and str(path) in text, text


# --------------------------------------------------------------------------------------------- headers


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".tif", ".gif", ".ppm", ".pgm", ".pbm", ".pam",
                                 ".pfm", ".ras", ".hdr", ".jp2", ".avif"])
def test_header_size_is_the_decoded_size_in_every_format_opencv_reads(ext):
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
    src = img.astype(np.float32) / 255 if ext in (".pfm", ".hdr") else (img[..., 0] if ext in (".pgm", ".pbm") else img)
    ok, buf = cv2.imencode(ext, src)
    assert ok
    header = image_header(buf.tobytes())
    assert header is not None and (header.width, header.height) == (53, 37)
    assert cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).shape[:2] == (37, 53)


@pytest.mark.parametrize("kw", [{"format": "JPEG", "progressive": True}, {"format": "WEBP", "lossless": True},
                                {"format": "WEBP", "exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"},
                                {"format": "TIFF", "compression": "tiff_lzw"}, {"format": "JPEG2000"}])
def test_header_size_of_pillow_variants(tmp_path, kw):
    img = np.random.default_rng(1).integers(0, 256, (21, 34, 3), np.uint8)
    path = tmp_path / "x.img"
    Image.fromarray(img).save(path, **kw)
    header = image_header(path.read_bytes())
    assert header is not None and (header.width, header.height) == (34, 21)


@pytest.mark.parametrize("name", sorted(FORGED))
def test_over_limit_header_is_refused_without_decoding(name, tmp_path, monkeypatch, capfd):
    file_name, data, width, height = FORGED[name]
    path = tmp_path / file_name
    path.write_bytes(data)
    monkeypatch.setattr(cv2, "imdecode", _no_decoding)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError) as info:
        read_image(path)
    assert_limit_paragraph(str(info.value), path, width, height)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 64 * 1024  # KiB: no big allocation
    assert capfd.readouterr().err == ""


def test_the_limit_is_inclusive_and_defined_once(tmp_path, monkeypatch):
    write_image(tmp_path / "ok.png", np.zeros((3, 4, 3), np.uint8))
    write_image(tmp_path / "over.png", np.zeros((3, 5, 3), np.uint8))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 12)
    assert read_image(tmp_path / "ok.png").shape == (3, 4, 3)
    with pytest.raises(InputError, match="3 x 5|5 x 3"):
        read_image(tmp_path / "over.png")
    assert MAX_IMAGE_PIXELS == 1 << 28


@pytest.mark.parametrize("data, says", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00", "header is damaged"),
    (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)), "empty size"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 10 + b"\xff\xda\x00\x02", "no frame header"),
    (b"not an image at all", "unsupported format"),
])
def test_damaged_or_unknown_headers_fail_before_the_decoder(data, says, tmp_path, monkeypatch, capfd):
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    monkeypatch.setattr(cv2, "imdecode", _no_decoding)
    with pytest.raises(InputError, match=says) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert capfd.readouterr().err == ""


# --------------------------------------------------------------------------------------------- through the CLI


def _job(world, command: str, photo, out, role: str = "source", hmr: bool = False) -> list:
    """CLI arguments of `command` with `photo` as its source (or reference) photo; the other photos'
    bodies given. hmr: recover the photo's body with HMR rather than give it."""
    f = world.files
    common = ["--weights-dir", f.weights_dir, "--generator", "none", "--device", "cpu", "-q"]
    if command == "imitate":
        return ["imitate", "-s", photo, "--source-smpl", f.source_smpl, "-d", f.motion, "-o", out, *common]
    if command == "imitate-driver-folder":
        return ["imitate", "-s", f.source, "--source-smpl", f.source_smpl, "-d", photo.parent, "-o", out, *common]
    if command == "swap":
        pair = (["-s", photo, "-r", f.reference, "--reference-smpl", f.reference_smpl] if role == "source" else
                ["-s", f.source, "--source-smpl", f.source_smpl, "-r", photo])
        return ["swap", *pair, "-o", out.with_suffix(".png"), *common]
    smpl = [] if hmr else ["--source-smpl", f.source_smpl]
    return ["novelview", "-s", photo, *smpl, "--yaw", 30, "-o", out.with_suffix(".png"), *common]


@pytest.mark.parametrize("name, command", [("png 100000", "novelview"), ("png 30000", "novelview"),
                                           ("jpeg 65000", "novelview"), ("png 100000", "imitate"),
                                           ("png 30000", "imitate-driver-folder"), ("jpeg 65000", "swap")])
def test_cli_refuses_a_huge_photo_with_one_paragraph(name, command, demo_world, tmp_path, capfd, monkeypatch):
    file_name, data, width, height = FORGED[name]
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / file_name
    path.write_bytes(data)
    monkeypatch.setattr(cv2, "imdecode", _decoding_all_but(data))
    out = tmp_path / "out.mp4"
    res = run_cli(capfd, *_job(demo_world, command, path, out))
    assert res.returncode == 3, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Input error:"), res.stderr
    assert_limit_paragraph(" ".join(res.stderr.split()), path, width, height)
    assert "libpng" not in res.stderr and "OpenCV" not in res.stderr and res.stdout == ""
    assert not out.exists() and not out.with_suffix(".png").exists()


# --------------------------------------------------------------------------------------------- no person


def _nobody(images_: torch.Tensor) -> torch.Tensor:
    """An HMR that finds no person anywhere: θ all NaN."""
    return torch.full((images_.shape[0], 85), float("nan"))


@pytest.fixture(scope="module")
def smpl():
    return SMPL(mannequin_arrays())


def test_track_frames_names_the_role_it_is_given(smpl):
    frame = np.full((40, 30, 3), 128, np.uint8)
    with pytest.raises(InputError) as info:
        tracking.track_frames([frame], _nobody, smpl, source="me.png", role="source photo")
    text = str(info.value)
    assert "No person found in the source photo" in text and "me.png" in text and "driver" not in text
    with pytest.raises(InputError, match="any frame of the driver"):
        tracking.track_frames([frame, frame], _nobody, smpl, source="dance.mp4")


@pytest.mark.parametrize("role", [None, "reference photo"])
def test_prepare_source_names_the_photo_not_the_driver(role, smpl, tmp_path):
    path = tmp_path / "empty room.png"
    write_image(path, np.full((48, 32, 3), 200, np.uint8))
    body = SimpleNamespace(hmr=lambda: _nobody, smpl=smpl)
    kw = {} if role is None else {"role": role}
    with pytest.raises(InputError) as info:
        prepare_source(body, path, 64, **kw)
    text = str(info.value)
    assert f"No person found in the {role or 'source photo'}" in text and str(path) in text
    assert "driver" not in text and info.value.exit_code == 3


@pytest.mark.parametrize("command, role", [("novelview", "source"), ("swap", "reference")])
def test_cli_no_person_in_a_photo_names_the_photo(command, role, demo_world, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(tracking, "plausible", lambda theta, *_: np.zeros(len(theta), bool))
    photo = demo_world.files.source if role == "source" else demo_world.files.reference
    res = run_cli(capfd, *_job(demo_world, command, photo, tmp_path / "out.mp4", role, hmr=True))
    assert res.returncode == 3, res.stderr
    text = " ".join(res.stderr.split())
    assert f"No person found in the {role} photo" in text and str(photo) in text, text
    assert "driver" not in text
