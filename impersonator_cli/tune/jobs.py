"""Personalization as the jobs ask for it: a budget in, the loaded generator tuned in place, a report out.

`for_source` runs the imitate schedule (spec §5.2: the source put into target poses, from the driver's
motion when a job has one); `for_pair` runs the swap schedule (spec §5.3) on a (source, reference)
pair. The job restores the generator afterwards (`Stages.tuned`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from impersonator_cli.errors import UsageError, check_option
from impersonator_cli.pipeline.source import PreparedSource
from impersonator_cli.pipeline.stages import Stages
from impersonator_cli.pipeline.synth import LWBSynthesizer
from impersonator_cli.tune import loop, pairs
from impersonator_cli.types import Progress


@dataclass(frozen=True)
class PersonalizeOptions:
    """The official post-tune within a budget: whichever of steps / seconds ends first (neither: the
    official schedule). use_face: None = when SphereFace weights exist. cache: reuse tuned weights."""

    steps: Optional[int] = None
    seconds: Optional[float] = None
    use_face: Optional[bool] = None
    cache: bool = True

    def __post_init__(self) -> None:
        check_option(self.steps is None or self.steps >= 1, "steps", "at least 1", self.steps, "--personalize-steps")
        check_option(self.seconds is None or self.seconds > 0, "seconds", "more than 0", self.seconds,
                     "--personalize-seconds")


def for_source(stages: Stages, src: PreparedSource, options: PersonalizeOptions = PersonalizeOptions(),
               motion_cams: np.ndarray | None = None, motion_poses: np.ndarray | None = None,
               progress: Progress | None = None) -> loop.PersonalizeReport:
    """Tune on one source; targets from the driving bodies (cams T x 3, poses T x 72) when given."""
    def data() -> pairs.TuningSet:
        targets = None
        if motion_poses is not None:
            device = stages.runtime.device
            targets = pairs.targets_from_motion(torch.from_numpy(motion_cams).float().to(device),
                                                torch.from_numpy(motion_poses).float().to(device), src.shape)
        return pairs.imitate_set(stages.body, src, targets)
    return _run(stages, data, loop.IMITATE, options, progress)


def for_pair(stages: Stages, src: PreparedSource, ref: PreparedSource, options: PersonalizeOptions,
             front_warp: bool = False, progress: Progress | None = None) -> loop.PersonalizeReport:
    """Tune on the (source, reference) pair of a swap."""
    return _run(stages, lambda: pairs.swap_set(stages.body, src, ref, front_warp), loop.SWAP, options, progress)


def _run(stages: Stages, data: Callable[[], pairs.TuningSet], schedule: loop.Schedule, options: PersonalizeOptions,
         progress: Progress | None) -> loop.PersonalizeReport:
    """Run `schedule` on the tuning set `data()` within the options' budget."""
    if not isinstance(stages.synth, LWBSynthesizer):
        raise UsageError("Personalization fine-tunes the GAN generator; it does nothing with --generator none",
                         hint="Drop --personalize, or use a generator.")
    generator = stages.synth.generator
    with torch.enable_grad():
        report = loop.personalize(
            generator, data(), schedule, loop.Budget(steps=options.steps, seconds=options.seconds),
            use_face=options.use_face, weights_dir=stages.weights_dir, cache=options.cache,
            progress=None if progress is None else lambda done, total, *_: progress(done, total))
    generator.eval()
    return report
