"""Official `.pth` checkpoints read safely and checked key by key; the converted safetensors form.

`torch.load(weights_only=True)` refuses any pickle that would construct arbitrary objects or call
functions, so reading a checkpoint never runs code from the file. Keys are checked against the
official manifest (impersonator_cli/weights/official_state_dicts.json): same names, same shapes.
"""

from __future__ import annotations

import json
import os
import pickle
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Mapping

import torch

from impersonator_cli.errors import WeightsError
from impersonator_cli.io.images import reserve_partial_path

MODULE_PREFIX = "module."
DROPPED_PREFIXES = {"face_sphere20a": ("fc6.",)}  # SphereFace classifier, not part of the loss network
FORMAT = "impersonate-safetensors/1"

# torchvision VGG-19 ("E"): conv widths per block; classifier 25088 -> 4096 -> 4096 -> 1000.
_VGG19_CONVS = ((3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256),
                (256, 256), "M", (256, 512), (512, 512), (512, 512), (512, 512), "M",
                (512, 512), (512, 512), (512, 512), (512, 512), "M")


def _vgg19_shapes() -> dict[str, tuple[int, ...]]:
    shapes, index = {}, 0
    for item in _VGG19_CONVS:
        if item == "M":
            index += 1
            continue
        cin, cout = item
        shapes[f"features.{index}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{index}.bias"] = (cout,)
        index += 2  # conv + ReLU
    for i, (cin, cout) in zip((0, 3, 6), ((25088, 4096), (4096, 4096), (4096, 1000))):
        shapes[f"classifier.{i}.weight"] = (cout, cin)
        shapes[f"classifier.{i}.bias"] = (cout,)
    return shapes


@lru_cache(maxsize=1)
def _manifest() -> dict:
    text = resources.files("impersonator_cli.weights").joinpath("official_state_dicts.json").read_text("utf-8")
    return json.loads(text)


def expected_shapes(section: str) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for a manifest section (plus the built-in `vgg19`)."""
    if section == "vgg19":
        return _vgg19_shapes()
    data = _manifest()
    if section.startswith("_") or section == "counts" or section not in data:
        valid = [k for k in data if not k.startswith("_") and k != "counts"] + ["vgg19"]
        raise WeightsError(f"Unknown checkpoint section '{section}'", hint=f"Valid sections: {', '.join(valid)}.")
    return {k: tuple(v) for k, v in data[section].items()}


# ---------------------------------------------------------------- reading official files


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"Refused to load {path.name}: it contains pickled objects or code that a plain checkpoint never "
            "holds (a safe loader only accepts tensors and containers)", path=path,
            hint="Do not use this file; get the official release again.", detail=str(exc).splitlines()[0],
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise WeightsError(
            f"{path.name} cannot be read as a PyTorch checkpoint (corrupt or truncated)", path=path,
            hint="Get the official release again and re-run `impersonate weights import`.",
            detail=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        ) from exc


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in obj.items())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or one wrapped as {'state_dict': {...}} and nothing else."""
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and _is_tensor_dict(obj.get("state_dict")):
        return dict(obj["state_dict"])
    raise WeightsError(f"{path.name} is not a state dict (a mapping of names to tensors)", path=path,
                       hint="Use the file from the official release.")


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a leading `module.` (DataParallel) from every key that has one."""
    return {k[len(MODULE_PREFIX):] if k.startswith(MODULE_PREFIX) else k: v for k, v in state_dict.items()}


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _problems(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple]) -> list[str]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    badtype = [k for k in expected if k in sd and k not in wrong and not k.endswith("num_batches_tracked")
               and not sd[k].is_floating_point()]
    out = []
    if wrong:
        out.append(f"{len(wrong)} with a wrong shape (" + "; ".join(
            f"{k}: expected {_fmt(expected[k])}, found {_fmt(sd[k].shape)}" for k in wrong[:3]) + ")")
    if missing:
        out.append(f"{len(missing)} missing (" + "; ".join(f"{k} {_fmt(expected[k])}" for k in missing[:3]) + ")")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected (" + "; ".join(
            f"{k} {_fmt(sd[k].shape)}" for k in unexpected[:3]) + ")")
    if badtype:
        out.append(f"{len(badtype)} not floating point ({'; '.join(f'{k}: {sd[k].dtype}' for k in badtype[:3])})")
    return out


def check_state_dict(sd: Mapping[str, torch.Tensor], section: str, path: str | os.PathLike) -> None:
    """Every key and shape exactly as in the official manifest section, else WeightsError."""
    problems = _problems(sd, expected_shapes(section))
    if problems:
        raise WeightsError(
            f"{Path(path).name} does not match the official '{section}' layout: " + "; ".join(problems), path=path,
            hint="This is not the file of the official release (or it is damaged): get the release again.",
        )


def load_official_state_dict(path: str | os.PathLike, section: str) -> dict[str, torch.Tensor]:
    """An official checkpoint as a plain state dict with exactly the manifest's keys and shapes.

    Leading `module.` is stripped, SphereFace's `fc6.*` classifier is dropped and missing BatchNorm
    `num_batches_tracked` counters (older checkpoints may lack them) are filled with 0.
    """
    path = Path(path)
    expected = expected_shapes(section)
    sd = strip_module_prefix(_unwrap(_torch_load(path), path))
    drop = DROPPED_PREFIXES.get(section, ())
    sd = {k: v for k, v in sd.items() if not k.startswith(drop)} if drop else sd
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros((), dtype=torch.int64)
    check_state_dict(sd, section, path)
    return {k: sd[k] for k in expected}


# ---------------------------------------------------------------- converted form


def _unshared(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each owning its storage (safetensors refuses shared memory)."""
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen or v.untyped_storage().nbytes() != v.numel() * v.element_size():
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix == ".safetensors" else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _atomic_write(dest: Path, write) -> None:
    tmp = reserve_partial_path(dest)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, config: dict) -> Path:
    """Write `<name>.safetensors` and `<name>.json` (config) atomically; returns the .safetensors path."""
    from safetensors.torch import save_file

    st_path, json_path = _paths(path)
    config = {"format": FORMAT, **config}
    text = json.dumps(config, indent=2, sort_keys=True)
    tensors = _unshared(state_dict)
    _atomic_write(st_path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "config": text}))
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return st_path


def check_converted_header(path: str | os.PathLike, section: str) -> None:
    """Keys and shapes of a converted file against the manifest, reading only its header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError("Not a readable safetensors file", path=path,
                           hint="Download or import it again.", detail=str(exc)) from exc
    expected = expected_shapes(section)
    bad = [k for k in set(shapes) | set(expected) if shapes.get(k) != expected.get(k)]
    if bad:
        k = sorted(bad)[0]
        raise WeightsError(
            f"{Path(path).name} does not match the official '{section}' layout ({len(bad)} keys differ; first: "
            f"{k}: expected {expected.get(k)}, found {shapes.get(k)})", path=path,
            hint="Download or import it again.")


def load_config(path: str | os.PathLike) -> dict:
    """The JSON config written beside a converted network (`path`: its .safetensors file)."""
    _, json_path = _paths(path)
    try:
        return json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError("The config beside the converted weights is missing or unreadable", path=json_path,
                           hint="Import the weights again (`impersonate weights import ...`).") from exc


def load_converted(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """State dict of a converted network (its .safetensors file), checked against its section.
    A registry name is resolved to a path by `weights.store.resolve` first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _paths(path)[0]
    if not path.is_file():
        raise WeightsError(
            "The converted weights file does not exist", path=path,
            hint="Import the official release: `impersonate weights import pretrains.zip checkpoints.zip`.")
    try:
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError("The converted weights file is corrupt", path=path,
                           hint="Run `impersonate weights verify`, then import again.", detail=str(exc)) from exc
    section = load_config(path).get("section") if _paths(path)[1].is_file() else None
    if section:
        check_state_dict(sd, section, path)
        sd = {k: sd[k] for k in expected_shapes(section)}  # the official key order
    return sd
