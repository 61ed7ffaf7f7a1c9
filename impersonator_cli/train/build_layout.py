"""Build an iPER-layout training set from the user's own videos and their motion files.

For every video `<stem>` (a video file or a folder of frames) the motion file
`<motions>/<stem>.motion.npz` (`impersonate motion extract`) gives per-frame cameras, poses and
shapes in the frame-normalized convention (the frame letterboxed to a square, body/tracking.py).
Each frame is letterboxed the same way (black bars) and resized to N x N, so those cameras are
exactly the normalized cameras of the written N x N image. Written:

    images/<stem>/<i>.jpg              zero-padded to the digits of the frame count (official)
    smpls/<stem>/pose_shape.pkl        {"cams", "pose", "shape"} float32 arrays, plain pickle
    train.txt, val.txt                 a seeded split of the video names

Without a motion file the optional `extract(video_path) -> MotionData` callable is used (e.g.
`body.motion.extract_motion` with HMR loaded); without either the video is refused.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from impersonator_cli.body.motion import SUFFIX, MotionData, load_motion
from impersonator_cli.errors import InputError, OutputError
from impersonator_cli.io.images import is_image_path, is_video_path, resize_rgb, write_image
from impersonator_cli.io.video import read_frames
from impersonator_cli.train.dataset import IMAGES_FOLDER, SMPLS_FOLDER, POSE_SHAPE_FILE, write_pose_shape

Extract = Callable[[Path], MotionData]


def letterbox(frame: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 -> size x size x 3: padded to a centred square (black), then resized."""
    h, w = frame.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side, 3), dtype=frame.dtype)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0:y0 + h, x0:x0 + w] = frame
    return resize_rgb(out, (size, size)) if side != size else out


def find_videos(folder: str | Path) -> list[Path]:
    """Video files and frame folders directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("The videos folder does not exist", path=folder,
                         hint="Pass a folder holding your videos (or one folder of frames each).")
    items = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and (
        (p.is_file() and is_video_path(p))
        or (p.is_dir() and any(is_image_path(q) for q in p.iterdir())))]
    if not items:
        raise InputError("The videos folder holds no video", path=folder,
                         hint="Put .mp4/.mov/... files or folders of frames in it.")
    return items


def motion_for(video: Path, motions_dir: Optional[Path], extract: Optional[Extract]) -> MotionData:
    if motions_dir is not None:
        path = motions_dir / f"{video.stem if video.is_file() else video.name}{SUFFIX}"
        if path.is_file():
            return load_motion(path)
    if extract is None:
        raise InputError("No motion file for this video", path=video,
                         hint=f"Create it with `impersonate motion extract {video} -o "
                              f"<motions>/{video.stem}{SUFFIX}` or pass the weights to extract it.")
    return extract(video)


def write_video(video: Path, motion: MotionData, root: Path, name: str, size: int) -> int:
    """Write one video's frames and pose_shape.pkl; -> frame count."""
    digits = len(str(motion.frame_count))
    folder = root / IMAGES_FOLDER / name
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with read_frames(video, start=motion.start, max_frames=motion.frame_count) as frames:
        for frame in frames:
            write_image(folder / f"{count:0>{digits}}.jpg", letterbox(frame, size))
            count += 1
    if count != motion.frame_count:
        raise InputError(f"The video gave {count} frames but its motion file has "
                         f"{motion.frame_count}", path=video,
                         hint="Extract the motion again from this exact video.")
    write_pose_shape(root / SMPLS_FOLDER / name / POSE_SHAPE_FILE, motion.cams, motion.poses,
                     motion.shapes)
    return count


def split_names(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle; at least one validation video when there are two or more."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_val = int(round(val_fraction * len(order)))
    n_val = min(max(n_val, 1 if len(order) > 1 and val_fraction > 0 else 0), len(order) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def build_layout(videos: str | Path | Sequence[str | Path], output: str | Path,
                 motions: str | Path | None = None, size: int = 256, val_fraction: float = 0.2,
                 seed: int = 0, extract: Optional[Extract] = None,
                 progress: Optional[Callable[[str, int], None]] = None) -> dict[str, list[str]]:
    """Write the iPER layout at `output`; -> {"train": [...], "val": [...]} video names."""
    items = find_videos(videos) if isinstance(videos, (str, Path)) else [Path(v) for v in videos]
    root = Path(output)
    if (root / IMAGES_FOLDER).exists() and any((root / IMAGES_FOLDER).iterdir()):
        raise OutputError("The output folder already holds a data set", path=root,
                          hint="Choose an empty folder.")
    motions_dir = Path(motions) if motions is not None else None
    names = []
    for video in items:
        name = video.stem if video.is_file() else video.name
        count = write_video(video, motion_for(video, motions_dir, extract), root, name, size)
        names.append(name)
        if progress is not None:
            progress(name, count)
    train, val = split_names(names, val_fraction, seed)
    (root / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (root / "val.txt").write_text("".join(f"{n}\n" for n in val))
    return {"train": train, "val": val}
