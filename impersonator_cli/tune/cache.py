"""The cache of personalized generators: tuned weights keyed by the source, the generator and settings.

Entries are `<key>.safetensors` + `<key>.json` in $IMPERSONATE_CACHE_DIR/personalized (default
~/.cache/impersonate/personalized). Only the tuned streams are stored; the BG stream is never tuned.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from impersonator_cli.defaults import cache_root
from impersonator_cli.weights.checkpoints import save_safetensors

CACHE_VERSION = "impersonate-posttune/2"  # 2: one key for both schedules (tune/loop.py)
TUNED_PREFIXES = ("src_model.", "tsf_model.")


def default_cache_dir() -> Path:
    """$IMPERSONATE_CACHE_DIR/personalized, else ~/.cache/impersonate/personalized."""
    return cache_root() / "personalized"


def tensor_digest(*tensors: Tensor) -> str:
    """sha256 over dtype, shape and bytes of each tensor (CPU copy)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """Identity of a network's weights: sha256 over its state dict (names, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()


def personalization_cache_key(source_hash: str, generator_id: str, settings: dict) -> str:
    """sha256 of (format version, source content hash, generator weights identity, settings)."""
    text = json.dumps({"v": CACHE_VERSION, "source": source_hash, "generator": generator_id,
                       "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_cached(key: str, generator: nn.Module, cache_dir: str | os.PathLike | None = None,
                meta: dict | None = None) -> Path:
    """Atomically write the tuned streams (``src_model.*``, ``tsf_model.*``) as
    ``<key>.safetensors`` + ``<key>.json``; the BG stream is never tuned, so it is not stored."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.cpu() for k, v in generator.state_dict().items() if k.startswith(TUNED_PREFIXES)}
    return save_safetensors(sd, folder / key, {"kind": "personalized-generator", "key": key,
                                                **(meta or {})})


def load_cached(key: str, cache_dir: str | os.PathLike | None = None
                ) -> tuple[dict[str, Tensor], dict] | None:
    """(state dict of the tuned streams, metadata) for `key`, or None (absent or unreadable)."""
    from safetensors.torch import load_file

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    st, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    if not (st.is_file() and meta.is_file()):
        return None
    try:
        return load_file(str(st)), json.loads(meta.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - a damaged cache entry is a miss, it gets rewritten
        return None


def apply_cached(generator: nn.Module, sd: dict[str, Tensor]) -> bool:
    expected = {k for k in generator.state_dict() if k.startswith(TUNED_PREFIXES)}
    if set(sd) != expected:
        return False
    generator.load_state_dict(sd, strict=False)
    return True
