"""Defaults that several layers share, each defined once (a light module: the CLI reads it at start-up).

The registry's default generator is `weights.registry.DEFAULT_GENERATOR`.
"""

import os
from pathlib import Path

SIZES = (256, 512)  # output sizes: the trained size, and twice it
DEFAULT_SIZE = 256
BG_KS = 13  # dilation (px) of the body mask before background inpainting (official --bg_ks)
FT_KS = 3  # dilation (px) of the source crop mask, and erosion of pseudo masks (official --ft_ks)

ENV_CACHE_DIR = "IMPERSONATE_CACHE_DIR"  # per-user cache root (personalized generators, weights checks)


def cache_root() -> Path:
    """$IMPERSONATE_CACHE_DIR, else ~/.cache/impersonate (read when called: tests and users may set it late)."""
    root = os.environ.get(ENV_CACHE_DIR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "impersonate"


# Largest image (width x height) read from a file: 2^28 = 268,435,456 pixels (e.g. 16384 x 16384;
# a 200-megapixel phone photo fits). Checked on the header before decoding: a few bytes can claim
# 100000 x 100000 pixels. A quarter of OpenCV's own CV_IO_MAX_IMAGE_PIXELS (2^30).
MAX_IMAGE_PIXELS = 1 << 28


# ---------------------------------------------------------------- where weights live (weights/store.py reads these)

ENV_PRECISION = "IMPERSONATE_PRECISION"  # what --precision auto stands for on every device (fp32, bf16, fp16)
ENV_WEIGHTS_DIR = "IMPERSONATE_WEIGHTS_DIR"  # a weights folder that replaces the per-user one
LEGACY_WEIGHTS_DIR = "weights"  # ./weights of the current folder: looked in only when it holds a manifest.json


def user_weights_dir() -> Path:
    """The per-user weights folder, the same from every working folder (read when called):
    $XDG_DATA_HOME/impersonate/weights, else ~/.local/share/impersonate/weights.

    Lookup order for weight files (weights/store.py `search_dirs`): --weights-dir, $IMPERSONATE_WEIGHTS_DIR,
    ./weights holding a manifest.json, this folder, then the Hugging Face cache. `weights import` and
    `weights download` write to --weights-dir, else $IMPERSONATE_WEIGHTS_DIR, else this folder."""
    data = Path(os.environ.get("XDG_DATA_HOME", "") or "~/.local/share").expanduser()
    if not data.is_absolute():  # the XDG spec: a relative path is invalid and ignored
        data = Path.home() / ".local" / "share"
    return data / "impersonate" / "weights"
