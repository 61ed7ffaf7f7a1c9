"""iPER-layout training data (spec §6.1) and the per-batch input construction (spec §6.2).

Layout under a data root:

    images/<vid>/000.jpg ...        frames, person-centred, resized to N x N on reading
    smpls/<vid>/pose_shape.pkl      {"cams": L x 3, "pose": L x 72, "shape": L x 10} (numpy)
    train.txt, val.txt              one <vid> per line (<vid> may contain '/': 001/1/1)

Sampling as the official ImPerDataset: the data set has sum_v floor(L_v / 10) items; item i uses
video i mod #videos, a source frame ~ U{0..14} and a target frame ~ U{0..L-1}. One difference:
the two frame indices are drawn from a generator seeded with (seed, epoch, i) instead of the
global numpy state, so that a run does not depend on the worker count and a resumed run draws
exactly what the uninterrupted run drew. Videos shorter than 15 frames draw the source from
U{0..L-1} (the official code would index past the end).

`InputBuilder` turns a batch (images, SMPLs) into the generator's inputs on the training device:
fim/wim through `view_body`, cond maps, the flow T, I_syn, the SID/TSF/BG inputs with the
official hard-coded erosion sizes (3 and 15), the attention targets and the head boxes.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler

from impersonator_cli.body import camera
from impersonator_cli.body.smpl import SMPL
from impersonator_cli.body.smpl_pickle import _SAFE_GLOBALS
from impersonator_cli.errors import InputError
from impersonator_cli.pipeline.compose import flow_composition
from impersonator_cli.defaults import FT_KS
from impersonator_cli.render.flow import erode
from impersonator_cli.gan.losses import head_boxes as official_head_boxes
from impersonator_cli.io.images import is_image_path, natural_key, read_image, resize_rgb
from impersonator_cli.render.body_view import BodyView, view_vertices
from impersonator_cli.render.maps import MeshMaps
from impersonator_cli.render.rasterize import Raster

IMAGES_FOLDER = "images"
SMPLS_FOLDER = "smpls"
POSE_SHAPE_FILE = "pose_shape.pkl"
INTERVALS = 10  # one item per 10 frames of every video
SOURCE_FRAMES = 15  # source frame ~ U{0..14}
TRAIN_BG_KS = 15  # BG-stream mask erosion (hard-coded in the official trainer, not --bg_ks); the SID
# crop and attention targets use FT_KS = 3, hard-coded there too (render/flow.py holds both defaults)
_HINT = "Rebuild the data set with `impersonate train layout` or fix the file."


# ------------------------------------------------------------------------------ reading files

_NUMPY_GLOBALS = {key: value for key, value in _SAFE_GLOBALS.items()
                  if key[0].startswith(("numpy", "_codecs"))}


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only numpy array/dtype/scalar reconstruction: dicts of arrays load, nothing runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"refusing the Python object '{module}.{name}'")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def read_pose_shape(path: str | Path) -> dict[str, np.ndarray]:
    """pose_shape.pkl -> {"cams": L x 3, "pose": L x 72, "shape": L x 10} float32 (latin1 pickle
    of numpy arrays, read without running code)."""
    path = Path(path)
    try:
        data = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except OSError as exc:
        raise InputError("Cannot read the SMPL file", path=path, hint=_HINT, detail=str(exc)) from exc
    except Exception as exc:  # any unpickling failure: corrupt or hostile file
        raise InputError(f"The SMPL file is not a pickle of numpy arrays ({exc})", path=path,
                         hint=_HINT) from exc
    out = {}
    for key, width in (("cams", 3), ("pose", 72), ("shape", 10)):
        value = data.get(key) if isinstance(data, dict) else None
        arr = np.asarray(value, dtype=np.float32) if value is not None else None
        if arr is None or arr.ndim != 2 or arr.shape[1] != width or not np.isfinite(arr).all():
            raise InputError(f"The SMPL file has no valid '{key}' array (L x {width})", path=path,
                             hint=_HINT)
        out[key] = arr
    if not len(out["cams"]) == len(out["pose"]) == len(out["shape"]):
        raise InputError("The SMPL file's cams, pose and shape have different lengths", path=path,
                         hint=_HINT)
    return out


def write_pose_shape(path: str | Path, cams: np.ndarray, pose: np.ndarray, shape: np.ndarray) -> Path:
    """Write pose_shape.pkl as the official readers expect: a plain pickle of a dict of arrays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"cams": np.asarray(cams, np.float32), "pose": np.asarray(pose, np.float32),
            "shape": np.asarray(shape, np.float32)}
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


def read_split(root: str | Path, split: str) -> list[str]:
    """<root>/<split>.txt -> video names (blank lines ignored)."""
    path = Path(root) / f"{split}.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"Cannot read the {split} split list", path=path, hint=_HINT,
                         detail=str(exc)) from exc
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise InputError(f"The {split} split list names no video", path=path, hint=_HINT)
    return names


def frame_files(folder: Path) -> list[Path]:
    """Image files of one video folder in natural order."""
    if not folder.is_dir():
        raise InputError("The video's frame folder does not exist", path=folder, hint=_HINT)
    return sorted((p for p in folder.iterdir() if p.is_file() and is_image_path(p)),
                  key=lambda p: natural_key(p.name))


def load_frame(path: Path, size: int) -> np.ndarray:
    """Frame -> 3 x N x N float32 in [-1, 1] (cv2 resize, no aspect kept, as the official)."""
    img = read_image(path)
    if img.shape[:2] != (size, size):
        img = resize_rgb(img, (size, size))
    return (img.astype(np.float32) / 255.0 * 2.0 - 1.0).transpose(2, 0, 1)


@dataclass(frozen=True)
class Video:
    """One video of the layout: its frame files and SMPL rows (L x 85 = cam | pose | shape)."""

    name: str
    frames: tuple[Path, ...]
    smpls: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def load_video(root: Path, name: str, images_folder: str = IMAGES_FOLDER,
               smpls_folder: str = SMPLS_FOLDER) -> Video:
    frames = frame_files(root / images_folder / name)
    ps_path = root / smpls_folder / name / POSE_SHAPE_FILE
    ps = read_pose_shape(ps_path)
    if len(frames) != len(ps["cams"]):
        raise InputError(f"Video {name} has {len(frames)} frames but {len(ps['cams'])} SMPL rows",
                         path=ps_path, hint=_HINT)
    smpls = np.concatenate([ps["cams"], ps["pose"], ps["shape"]], axis=1)
    return Video(name=name, frames=tuple(frames), smpls=smpls)


# ------------------------------------------------------------------------------ data set

class IPerDataset(Dataset):
    """Pairs (source, target) of the same video. Items are indices or (index, epoch) tuples (the
    `EpochSampler` yields the latter); a sample is {"images": 2 x 3 x N x N in [-1, 1],
    "smpls": 2 x 85, "frames": (src, tgt) indices, "video": index}."""

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 256,
                 seed: int = 0, intervals: int = INTERVALS, images_folder: str = IMAGES_FOLDER,
                 smpls_folder: str = SMPLS_FOLDER):
        self.root, self.image_size, self.seed = Path(root), int(image_size), int(seed)
        self.videos = [load_video(self.root, v, images_folder, smpls_folder)
                       for v in read_split(self.root, split)]
        self.length = sum(len(v) // intervals for v in self.videos)
        if self.length == 0:
            raise InputError(f"The {split} videos are too short: each needs >= {intervals} frames",
                             path=self.root, hint=_HINT)

    def __len__(self) -> int:
        return self.length

    def pair(self, index: int, epoch: int = 0) -> tuple[int, int, int]:
        """-> (video index, source frame, target frame) of item `index` in `epoch`."""
        vi = index % len(self.videos)
        n = len(self.videos[vi])
        rng = np.random.default_rng([self.seed, epoch, index])
        return vi, int(rng.integers(0, min(SOURCE_FRAMES, n))), int(rng.integers(0, n))

    def __getitem__(self, item) -> dict[str, Any]:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        vi, s, t = self.pair(int(index), int(epoch))
        video = self.videos[vi]
        images = np.stack([load_frame(video.frames[k], self.image_size) for k in (s, t)])
        return {"images": torch.from_numpy(images), "smpls": torch.from_numpy(video.smpls[[s, t]]),
                "frames": torch.tensor([s, t]), "video": vi}


class EpochSampler(DistributedSampler):
    """DistributedSampler yielding (index, epoch) and able to skip the batches already trained
    in this epoch (`set_epoch(epoch, skip=...)`, skip counted in samples of this rank)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self):
        indices = list(super().__iter__())[self.skip:]
        return iter([(i, self.epoch) for i in indices])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


# ------------------------------------------------------------------------------ inputs (§6.2)

@dataclass(frozen=True)
class TrainInputs:
    """Everything one training step needs (all on the training device, float32).

    src_img, tgt_img: B x 3 x N x N in [-1, 1]
    bg_in:   B x 4 x N x N  concat(I_src * m, m), m = erode(bgInd_src, 15)
    src_in:  B x 6 x N x N  concat(I_src * (1 - erode(bgInd_src, 3)), cond_src)
    tsf_in:  B x 6 x N x N  concat(I_syn, cond_tgt)
    T:       B x N x N x 2  source -> target flow
    cond_tgt: B x 3 x N x N
    mask_targets: B x 2 x N x N  (erode(bgInd_src, 3), erode(bgInd_tgt, 3)), 1 = background
    head_boxes: B x 4 int64 (x0, y0, x1, y1) pixels of the target's head
    """

    src_img: Tensor
    tgt_img: Tensor
    bg_in: Tensor
    src_in: Tensor
    tsf_in: Tensor
    T: Tensor
    cond_tgt: Tensor
    mask_targets: Tensor
    head_boxes: Tensor


BoxFn = Callable[[Tensor, int], Tensor]  # j2d B x 19 x 2 in [-1, 1], N -> B x 4


class InputBuilder(nn.Module):
    """SMPL + mesh maps -> `TrainInputs` (no parameters; buffers follow `.to(device)`)."""

    def __init__(self, smpl: SMPL, maps: MeshMaps, head_boxes: BoxFn = official_head_boxes):
        super().__init__()
        self.smpl, self.maps, self.head_boxes = smpl, maps, head_boxes

    @torch.no_grad()
    def forward(self, images: Tensor, smpls: Tensor) -> TrainInputs:
        """images: B x 2 x 3 x N x N, smpls: B x 2 x 85 -> TrainInputs."""
        B, N = images.shape[0], images.shape[-1]
        theta = smpls.reshape(2 * B, 85).to(self.smpl.v_template.dtype)
        cam, pose, shape = theta[:, :3], theta[:, 3:75], theta[:, 75:85]
        out = self.smpl(pose, shape)
        src_view, tgt_view = _split_pairs(view_vertices(out.vertices, cam, self.smpl.faces, N), B)
        src_img, tgt_img = images[:, 0].float(), images[:, 1].float()
        stage2 = flow_composition(self.maps, [src_img], [src_view], tgt_view)
        cond_src, cond_tgt = self.maps.render_cond(src_view.raster.face_index).float(), stage2.cond.float()
        ft_src, ft_tgt = erode(cond_src[:, 2:3], FT_KS), erode(cond_tgt[:, 2:3], FT_KS)
        m = erode(cond_src[:, 2:3], TRAIN_BG_KS)
        j2d = camera.project_2d(out.cocoplus, cam).view(B, 2, -1, 2)[:, 1]
        return TrainInputs(
            src_img=src_img, tgt_img=tgt_img, bg_in=torch.cat([src_img * m, m], 1),
            src_in=torch.cat([src_img * (1 - ft_src), cond_src], 1),
            tsf_in=torch.cat([stage2.warped, cond_tgt], 1), T=stage2.flows[0].float(), cond_tgt=cond_tgt,
            mask_targets=torch.cat([ft_src, ft_tgt], 1),
            head_boxes=self.head_boxes(j2d.float(), N).long())


def _split_pairs(view: BodyView, B: int) -> tuple[BodyView, BodyView]:
    """An interleaved (src, tgt) BodyView of 2B bodies -> (sources, targets), B bodies each."""
    def half(t: Tensor, i: int) -> Tensor:
        return t.view(B, 2, *t.shape[1:])[:, i].contiguous()

    return tuple(BodyView(vertices=half(view.vertices, i), f2verts=half(view.f2verts, i),
                          raster=Raster(face_index=half(view.raster.face_index, i),
                                        weights=half(view.raster.weights, i))) for i in (0, 1))
