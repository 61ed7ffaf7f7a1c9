"""An encoded image's format and claimed size, read from its header without decoding any pixel.

`read_image` refuses an image whose header claims more than `defaults.MAX_IMAGE_PIXELS` before
OpenCV sees it: a few hostile bytes (a PNG's IHDR, a JPEG's SOF) can claim 100000 x 100000
pixels, and the decoder would then allocate for that, fail with its own limit's assertion, or
print raw libpng/libjpeg lines on the process's stderr.

`image_header(data)` -> ImageHeader(format, width, height), None for a format not listed here, and
HeaderError for a known format whose header is cut short or malformed. Formats read:
PNG (IHDR), JPEG (the SOF segment), WebP (VP8, VP8L, VP8X), BMP (Windows and OS/2 headers), GIF,
TIFF and BigTIFF (the first IFD), PNM/PAM/PFM, Sun raster, Radiance HDR, JPEG 2000 (JP2 boxes or a
raw codestream) and AVIF: every still format OpenCV's imdecode reads in the wheels we install.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: C0..CF except DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn stand alone


class HeaderError(ValueError):
    """A recognised format whose header is cut short or malformed."""


@dataclass(frozen=True)
class ImageHeader:
    """format: short name ('PNG', 'JPEG', ...); width, height: the claimed size in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _unpack(fmt: str, data: bytes, offset: int) -> tuple:
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise HeaderError("the header is cut short")
    return struct.unpack_from(fmt, data, offset)


def _png(data: bytes) -> tuple[int, int]:
    length, kind, width, height = _unpack(">I4sII", data, 8)
    if kind != b"IHDR" or length < 13:
        raise HeaderError("the first chunk is not IHDR")
    return width, height


def _jpeg(data: bytes) -> tuple[int, int]:
    pos = 2
    while True:
        pos = data.find(b"\xff", pos)  # stray bytes between segments: libjpeg skips them too
        while pos >= 0 and _unpack("B", data, pos + 1)[0] == 0xFF:  # fill bytes before the marker code
            pos += 1
        if pos < 0:
            raise HeaderError("the header is cut short")
        marker = data[pos + 1]
        if marker == 0x00:  # a stuffed 0xFF byte, not a marker
            pos += 2
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            raise HeaderError("no frame header (SOF) before the image data")
        (length,) = _unpack(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            height, width = _unpack(">HH", data, pos + 5)
            return width, height
        if length < 2:
            raise HeaderError("a segment has an impossible length")
        pos += 2 + length


def _webp(data: bytes) -> tuple[int, int]:
    (kind,) = _unpack("4s", data, 12)
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("the VP8 start code is missing")
        width, height = _unpack("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        signature, bits = _unpack("<BI", data, 20)
        if signature != 0x2F:
            raise HeaderError("the VP8L signature is missing")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        w0, w1, w2, h0, h1, h2 = _unpack("<6B", data, 24)
        return (w0 | w1 << 8 | w2 << 16) + 1, (h0 | h1 << 8 | h2 << 16) + 1
    raise HeaderError(f"unknown first chunk {kind!r}")


def _bmp(data: bytes) -> tuple[int, int]:
    (dib_size,) = _unpack("<I", data, 14)
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return _unpack("<HH", data, 18)
    if dib_size < 16:
        raise HeaderError("the DIB header is too small")
    width, height = _unpack("<ii", data, 18)
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _tiff(data: bytes) -> tuple[int, int]:
    end = "<" if data[:2] == b"II" else ">"
    (version,) = _unpack(end + "H", data, 2)
    big = version == 43
    ifd = _unpack(end + "Q", data, 8)[0] if big else _unpack(end + "I", data, 4)[0]
    count = _unpack(end + ("Q" if big else "H"), data, ifd)[0]
    first, step = ifd + (8 if big else 2), (20 if big else 12)
    value_at = 12 if big else 8
    sizes = {}
    for i in range(min(count, 4096)):
        entry = first + i * step
        tag, kind = _unpack(end + "HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                raise HeaderError("the image size has an unexpected type")
            sizes[tag] = _unpack(end + fmt, data, entry + value_at)[0]
    if len(sizes) < 2:
        raise HeaderError("the first IFD gives no image size")
    return sizes[256], sizes[257]


def _pnm(data: bytes) -> tuple[int, int]:
    text = data[:4096].decode("latin-1")
    if text[:2] == "P7":  # PAM: WIDTH and HEIGHT lines before ENDHDR
        found = {k: int(v) for k, v in re.findall(r"^(WIDTH|HEIGHT)\s+(\d+)", text, re.MULTILINE)}
        if len(found) < 2:
            raise HeaderError("WIDTH or HEIGHT is missing")
        return found["WIDTH"], found["HEIGHT"]
    tokens = re.sub(r"#[^\n\r]*", " ", text[2:]).split()
    if len(tokens) < 2 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        raise HeaderError("the width and height are missing")
    return int(tokens[0]), int(tokens[1])


def _sun_raster(data: bytes) -> tuple[int, int]:
    return _unpack(">II", data, 4)


def _radiance(data: bytes) -> tuple[int, int]:
    _, blank, rest = data[:65536].partition(b"\n\n")  # header lines, an empty line, the resolution
    found = re.match(rb"([-+])([XY]) (\d+) ([-+])([XY]) (\d+)", rest) if blank else None
    if found is None:
        raise HeaderError("the resolution line is missing")
    first, second = int(found.group(3)), int(found.group(6))
    return (second, first) if found.group(2) == b"Y" else (first, second)


def _j2k(data: bytes) -> tuple[int, int]:
    """A raw JPEG 2000 codestream: the SIZ segment right after SOC gives the image area."""
    x_end, y_end, x_start, y_start = _unpack(">IIII", data, 8)
    return x_end - x_start, y_end - y_start


def _boxes(data: bytes, start: int, end: int):
    """(type, body start, box end) of each ISO base-media box in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = _unpack(">I4s", data, pos)
        header = 8
        if size == 1:  # a 64-bit size follows the type
            (size,), header = _unpack(">Q", data, pos + 8), 16
        elif size == 0:  # the box runs to the end
            size = end - pos
        if size < header or pos + size > end:
            raise HeaderError(f"the {kind!r} box has an impossible size")
        yield kind, pos + header, pos + size
        pos += size


def _box(data: bytes, path: tuple[bytes, ...], start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(body start, end) of the first box reached by the box types in `path` (FullBoxes' version and
    flags skipped); HeaderError when there is none."""
    end = len(data) if end is None else end
    for kind, body, stop in _boxes(data, start, end):
        if kind == path[0]:
            body += 4 if kind in (b"meta", b"ispe") else 0  # FullBoxes: version and flags first
            return (body, stop) if len(path) == 1 else _box(data, path[1:], body, stop)
    raise HeaderError(f"no {path[0].decode('latin-1')!r} box")


def _jp2(data: bytes) -> tuple[int, int]:
    body, _ = _box(data, (b"jp2h", b"ihdr"))
    height, width = _unpack(">II", data, body)
    return width, height


def _avif(data: bytes) -> tuple[int, int]:
    """The largest image spatial extent (ispe) of the item properties: the whole image, not a tile."""
    start, end = _box(data, (b"meta", b"iprp", b"ipco"))
    sizes = [_unpack(">II", data, body + 4) for kind, body, _ in _boxes(data, start, end) if kind == b"ispe"]
    if not sizes:
        raise HeaderError("no image spatial extent (ispe) property")
    return max(sizes, key=lambda size: size[0] * size[1])


def _is_avif(data: bytes) -> bool:
    if data[4:8] != b"ftyp":
        return False
    (size,) = struct.unpack(">I", data[:4])
    brands = data[8:12] + data[16:max(16, min(size, 256))]
    return any(brands[i:i + 4] in (b"avif", b"avis") for i in range(0, len(brands) - 3, 4))


_FORMATS = (  # (name, test of the first bytes, size reader)
    ("PNG", lambda d: d[:8] == PNG_SIGNATURE, _png),
    ("JPEG", lambda d: d[:2] == b"\xff\xd8", _jpeg),
    ("WebP", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", _webp),
    ("BMP", lambda d: d[:2] == b"BM", _bmp),
    ("GIF", lambda d: d[:6] in (b"GIF87a", b"GIF89a"), lambda d: _unpack("<HH", d, 6)),
    ("TIFF", lambda d: d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    ("PNM", lambda d: re.match(rb"P[1-7Ff]\s", d[:3]) is not None, _pnm),
    ("Sun raster", lambda d: d[:4] == b"\x59\xa6\x6a\x95", _sun_raster),
    ("Radiance HDR", lambda d: d[:2] == b"#?", _radiance),
    ("JPEG 2000", lambda d: d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n", _jp2),
    ("JPEG 2000", lambda d: d[:4] == b"\xff\x4f\xff\x51", _j2k),
    ("AVIF", _is_avif, _avif),
)
FORMAT_NAMES = tuple(dict.fromkeys(name for name, _, _ in _FORMATS))


def image_header(data: bytes) -> ImageHeader | None:
    """Format and claimed size of an encoded image; None when the format is none of FORMAT_NAMES.

    Raises HeaderError when the format is recognised but its header is cut short or malformed."""
    for name, matches, size in _FORMATS:
        if matches(data):
            width, height = size(data)
            if width <= 0 or height <= 0:
                raise HeaderError(f"it claims an empty size ({width} x {height})")
            return ImageHeader(name, int(width), int(height))
    return None
