"""Still-image I/O with OpenCV: read any common image as upright RGB, write atomically.

`read_image` always returns an RGB ``H x W x 3`` uint8 array:

- EXIF orientation (JPEG APP1, PNG eXIf, WebP EXIF) is applied, so phone photos come out upright
  (OpenCV's IMREAD_UNCHANGED ignores it; we parse the tag ourselves).
- Alpha is composited over white (`read_image_rgba` returns the alpha instead).
- 16-bit images are scaled to 8 bits as round(v / 257), so 65535 -> 255 exactly.
- Greyscale and palette images are expanded to three channels.
- The header is read first (io/image_header.py): an image claiming more than
  `defaults.MAX_IMAGE_PIXELS` pixels, a damaged header or an unknown format is refused with an
  InputError before OpenCV decodes anything (so nothing is allocated for the claimed size and no
  raw libpng/libjpeg line reaches stderr).

OpenCV is imported lazily so that a missing system library (libGL) becomes an
EnvironmentProblem with a fix, not an import-time crash of the whole CLI.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import struct
import tempfile
from os import PathLike
from pathlib import Path
from typing import Union

import numpy as np

from impersonator_cli.defaults import MAX_IMAGE_PIXELS
from impersonator_cli.errors import EnvironmentProblem, InputError, OutputError
from impersonator_cli.io.image_header import FORMAT_NAMES, HeaderError, image_header
from impersonator_cli.io.publish import publish

PathArg = Union[str, "PathLike[str]"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
)
_EXIF_ORIENTATION_TAG = 0x0112


def is_image_path(path: PathArg) -> bool:
    """True when the file name has an image extension we read (.jpg .jpeg .png .webp .bmp)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: PathArg) -> bool:
    """True when the file name has a common video container extension (.mp4 .mov .mkv ...)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def natural_key(name: str) -> list:
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # typically libGL.so.1 missing with opencv-python
        raise EnvironmentProblem(
            "OpenCV (cv2) cannot be imported",
            hint="On servers without a display install `pip install opencv-python-headless` "
            "(in place of opencv-python) or the system library with `apt install libgl1`.",
            detail=str(exc),
        ) from exc
    return cv2


# ----------------------------------------------------------------------------- EXIF orientation


def _tiff_orientation(tiff: bytes) -> int:
    """Orientation (1..8) from a TIFF/EXIF blob starting at its byte-order mark; 1 if absent."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(end + "H", tiff[ifd : ifd + 2])
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(end + "HH", entry[:4])
        if tag == _EXIF_ORIENTATION_TAG and kind == 3:  # SHORT, stored in the value field
            (value,) = struct.unpack(end + "H", entry[8:10])
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_exif(data: bytes) -> bytes:
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no more headers
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            return body[6:]
        pos += 2 + length
    return b""


def _png_exif(data: bytes) -> bytes:
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"eXIf":
            return data[pos + 8 : pos + 8 + length]
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return b""


def _webp_exif(data: bytes) -> bytes:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        if kind == b"EXIF":
            blob = data[pos + 8 : pos + 8 + length]
            return blob[6:] if blob[:6] == b"Exif\x00\x00" else blob
        pos += 8 + length + (length & 1)
    return b""


def _exif_blob(data: bytes) -> bytes:
    """The TIFF part of the EXIF block of a JPEG, PNG or WebP file (b'' if none)."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_exif(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_exif(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_exif(data)
    return b""


def exif_orientation(data: bytes) -> int:
    """EXIF orientation value 1..8 of an encoded image (1 when absent or unreadable)."""
    try:
        return _tiff_orientation(_exif_blob(data))
    except struct.error:
        return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored image (H x W x C) upright according to its EXIF orientation (1..8)."""
    ops = {
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transpose
        6: lambda a: np.rot90(a, k=-1),  # needs 90 degrees clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transverse
        8: lambda a: np.rot90(a, k=1),  # needs 90 degrees counter-clockwise
    }
    op = ops.get(orientation)
    return img if op is None else np.ascontiguousarray(op(img))


# ----------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InputError("Cannot find the image", path=path, hint="Check the path and spelling.")
    if path.is_dir():
        raise InputError("Expected an image file but got a folder", path=path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError("Cannot read the image", path=path, hint="Check file permissions.", detail=str(exc)) from exc


def check_header(data: bytes, path: Path) -> None:
    """InputError unless `data` starts with a readable header of a known format claiming at most
    MAX_IMAGE_PIXELS pixels. Reads the header only: nothing is decoded or allocated."""
    try:
        header = image_header(data)
    except HeaderError as exc:
        raise InputError(f"Cannot decode the image: its header is damaged ({exc})", path=path,
                         hint="Re-export or re-save the image.") from exc
    if header is None:
        raise InputError(
            "Cannot decode the image: it is empty, damaged or in an unsupported format "
            f"(formats read: {', '.join(FORMAT_NAMES)})", path=path, hint="Use a JPEG, PNG, WebP or BMP file.")
    if header.pixels > MAX_IMAGE_PIXELS:
        raise InputError(
            f"The {header.format} image claims {header.width} x {header.height} pixels "
            f"({header.pixels / 1e6:,.0f} megapixels), more than the limit of {MAX_IMAGE_PIXELS:,} pixels "
            f"({MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, e.g. 16384 x 16384), so it was not decoded",
            path=path, hint="Downscale it first (a few thousand pixels on the longer side is plenty: the "
                            "models work at 256 or 512 pixels), or check that the file is not damaged.")


def _decode(path: Path) -> np.ndarray:
    """Stored pixels as OpenCV decodes them: H x W, H x W x 3 (BGR) or H x W x 4 (BGRA), uint8/uint16."""
    data = _read_bytes(path)
    check_header(data, path)
    cv2 = _cv2()
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV's own checks: report a bad file, not a bug
        img = None
    if img is None or img.size == 0:
        raise InputError(
            "Cannot decode the image (damaged file or unsupported format)",
            path=path,
            hint="Use a JPEG, PNG, WebP or BMP file.",
        )
    return apply_orientation(img, exif_orientation(data))


def _to_float_rgba(img: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Split decoded pixels into RGB (H x W x 3) and alpha (H x W or None), both in [0, 1] float32."""
    if img.dtype not in (np.uint8, np.uint16):
        raise InputError(f"Unsupported image sample type {img.dtype}", path=path, hint="Use 8- or 16-bit images.")
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    x = img.astype(np.float32) / scale
    if x.ndim == 2:
        return np.repeat(x[..., None], 3, axis=2), None
    if x.shape[2] == 1:
        return np.repeat(x, 3, axis=2), None
    if x.shape[2] == 2:  # grey + alpha
        return np.repeat(x[..., :1], 3, axis=2), x[..., 1]
    rgb = x[..., 2::-1]
    return rgb, (x[..., 3] if x.shape[2] == 4 else None)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as round(v / 257) in exact integer arithmetic; uint8 unchanged."""
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return img


def read_image(path: PathArg) -> np.ndarray:
    """Read an image as upright RGB uint8, H x W x 3 (alpha composited over white)."""
    path = Path(path)
    img = _decode(path)
    has_alpha = img.ndim == 3 and img.shape[2] in (2, 4)
    if not has_alpha:
        img = _to_uint8(img)
        if img.ndim == 2:
            return np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2))
        if img.shape[2] == 1:
            return np.ascontiguousarray(np.repeat(img, 3, axis=2))
        return np.ascontiguousarray(img[..., 2::-1])
    rgb, alpha = _to_float_rgba(img, path)
    out = rgb * alpha[..., None] + (1.0 - alpha[..., None])
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def read_image_rgba(path: PathArg) -> tuple[np.ndarray, np.ndarray]:
    """Read an image as upright (RGB H x W x 3 uint8, alpha H x W uint8); alpha is 255 if absent.

    The RGB values are the stored colour, not composited.
    """
    path = Path(path)
    img = _decode(path)
    rgb, alpha = _to_float_rgba(img, path)
    rgb8 = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    if alpha is None:
        return rgb8, np.full(rgb8.shape[:2], 255, np.uint8)
    return rgb8, np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)


def resize_rgb(img: np.ndarray, size: tuple) -> np.ndarray:
    """Resize H x W x C to size=(w, h) with cv2.resize INTER_LINEAR (the official preprocessing)."""
    return _cv2().resize(img, (int(size[0]), int(size[1])), interpolation=_cv2().INTER_LINEAR)


# ----------------------------------------------------------------------------- writing


def _partial_prefix(path: Path) -> str:
    return f".{path.name}.partial-"


def leftover_partials(path: PathArg) -> list[Path]:
    """The hidden temp files of `path` that writers killed before they finished left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(_partial_prefix(path))}*"))


def reserve_partial_path(path: PathArg) -> Path:
    """Create an empty hidden temp file beside `path` with the same extension.

    Example: out/clip.mp4 -> out/.clip.mp4.partial-k3j2.mp4. Raises OutputError if the folder is
    missing or not writable.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError("The output folder does not exist", path=folder, hint="Create it first.")
    try:
        fd, name = tempfile.mkstemp(prefix=_partial_prefix(path), suffix=path.suffix, dir=folder)
    except OSError as exc:
        raise OutputError("Cannot write in the output folder", path=folder, hint="Check permissions.") from exc
    os.close(fd)
    os.chmod(name, _file_mode())  # mkstemp makes 0600 files; outputs get the usual umask-based mode
    return Path(name)


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _encode_params(cv2, ext: str, quality: int) -> list[int]:
    if ext in (".jpg", ".jpeg"):
        return [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if ext == ".webp":
        return [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    return []


def write_image(path: PathArg, rgb: np.ndarray, quality: int = 95, overwrite: bool = True) -> Path:
    """Write RGB (H x W x 3) or RGBA (H x W x 4) uint8 to PNG/JPEG/WebP/BMP, atomically.

    The data goes to a hidden temp file beside `path` that is moved to `path` only once complete
    (`io.publish`). `quality` applies to JPEG and WebP. overwrite=False: OutputError, and nothing
    written, when `path` exists by then.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise OutputError(f"Cannot write images of type '{ext}'", path=path, hint="Use .png, .jpg, .webp or .bmp.")
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"write_image expects H x W x 3|4 uint8, got {arr.shape} {arr.dtype}")
    cv2 = _cv2()
    bgr = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), _encode_params(cv2, ext, quality))
    if not ok:
        raise OutputError("OpenCV could not encode the image", path=path)
    tmp = reserve_partial_path(path)
    try:
        tmp.write_bytes(buf.tobytes())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError("Cannot write the image", path=path, detail=str(exc)) from exc
        raise
    return publish(tmp, path, overwrite)
