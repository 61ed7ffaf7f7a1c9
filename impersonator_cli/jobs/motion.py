"""`motion extract`: a driver's motion recovered once (HMR + SMPL, person-centred) and saved as a motion
file, so that many jobs can reuse it (the batch case)."""

from __future__ import annotations

from impersonator_cli.body.motion import MotionData, extract_motion, save_motion
from impersonator_cli.devices import resolve_device
from impersonator_cli.jobs.common import existing, output_path
from impersonator_cli.pipeline.rig import load_body_model
from impersonator_cli.types import PathLike, Progress


def extract_motion_file(driver: PathLike, output: PathLike, *, weights_dir: PathLike | None = None,
                        device: str = "auto", batch_size: int = 8, start: float = 0.0,
                        duration: float | None = None, max_frames: int | None = None, smooth: float = 0.0,
                        overwrite: bool = False, progress: Progress | None = None) -> MotionData:
    """Recover a driver's motion and save it as a .motion.npz file; -> the motion."""
    output = output_path(output, overwrite, (".npz",))
    driver = existing(driver, "driver")
    body = load_body_model(weights_dir, resolve_device(device))
    motion = extract_motion(driver, body.hmr(), body.smpl, batch_size=batch_size, max_frames=max_frames,
                            start=start, duration=duration, smooth_sigma=smooth, progress=progress)
    save_motion(output, motion, overwrite=overwrite)
    return motion
