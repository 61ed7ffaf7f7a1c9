"""`motion extract`: a driver's motion recovered once (HMR + SMPL, person-centred) and saved as a motion
file, so that many jobs can reuse it (the batch case)."""

from __future__ import annotations

from impersonator_cli.body.motion import MotionData, extract_motion, save_motion
from impersonator_cli.devices import resolve_device
from impersonator_cli.errors import check_option
from impersonator_cli.jobs.common import existing, output_path
from impersonator_cli.pipeline.rig import load_body_model
from impersonator_cli.types import PathLike, Progress


def extract_motion_file(driver: PathLike, output: PathLike, *, weights_dir: PathLike | None = None,
                        device: str = "auto", batch_size: int = 8, start: float = 0.0,
                        duration: float | None = None, max_frames: int | None = None, smooth: float = 0.0,
                        overwrite: bool = False, progress: Progress | None = None) -> MotionData:
    """Recover a driver's motion and save it as a .motion.npz file; -> the motion. A variable-rate
    driver's file keeps each frame's time (`times`), so jobs driven by it keep the timing."""
    check_option(batch_size >= 1, "batch_size", "at least 1", batch_size)
    check_option(start >= 0, "start", "0 or more seconds", start)
    check_option(duration is None or duration > 0, "duration", "more than 0 seconds", duration)
    check_option(max_frames is None or max_frames >= 1, "max_frames", "at least 1", max_frames)
    check_option(smooth >= 0, "smooth", "0 (off) or more frames", smooth)
    output = output_path(output, overwrite, (".npz",))
    driver = existing(driver, "driver")
    body = load_body_model(weights_dir, resolve_device(device))
    motion = extract_motion(driver, body.hmr(), body.smpl, batch_size=batch_size, max_frames=max_frames,
                            start=start, duration=duration, smooth_sigma=smooth, progress=progress)
    save_motion(output, motion, overwrite=overwrite)
    return motion
