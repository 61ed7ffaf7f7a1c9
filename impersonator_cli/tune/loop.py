"""Personalization: the official few-step fine-tuning of the generator ("post-tune"), one loop for
imitate / novel view (spec §5.2) and swap (spec §5.3), their differences written down as data.

* IMITATE: batches of min(K, 4) pairs in order, drop_last, repeated (the official DataLoader);
  constant lr; 5 epochs over the pairs unless a budget says otherwise.
* SWAP: the two directions as one batch of 2 (or alternating with batch_size 1), 50 steps; the lr is
  constant up to the official 0-based step 26 and drops by (2e-4 - 1e-5) / 25 after every later step.

Both: Adam(lr 2e-4, betas (0.5, 0.999)) over all generator parameters; the background is fixed, so
the BG stream gets no gradient and is left untouched. The face term needs SphereFace weights; without
them it is skipped (the report says which file is missing) unless it was asked for explicitly. Tuned
weights are cached (tune/cache.py) by a hash of the pairs, the generator weights and the settings.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

from impersonator_cli.errors import WeightsError
from impersonator_cli.gan.generator import LiquidWarpingGenerator
from impersonator_cli.gan.losses import FaceLoss, load_sphereface
from impersonator_cli.tune import objective
from impersonator_cli.tune.cache import (
    apply_cached, load_cached, module_fingerprint, personalization_cache_key, save_cached, tensor_digest,
)
from impersonator_cli.tune.objective import StepLosses
from impersonator_cli.tune.pairs import TuningSet

Progress = Callable[[int, "int | None", float], None]  # (steps done, step limit or None, total loss)
LR_INIT, LR_FINAL, LR_FIX_STEPS = 2e-4, 1e-5, 25


@dataclass(frozen=True)
class Schedule:
    """How one kind of personalization runs.

    loss(generator, data, idx, init_pred, face) -> (total, StepLosses); initial(generator, data,
    batch_size) -> K x 3 x N x N; batch_size: default batch; steps: default number of steps (None:
    `Budget.epochs` epochs over the pairs); lr_final: None = constant lr, else the linear decay of
    `decayed_lr` towards it after `lr_fix` + 1 steps.
    """

    name: str
    loss: Callable
    initial: Callable
    batch_size: int
    steps: int | None = None
    lr_final: float | None = None
    lr_fix: int = LR_FIX_STEPS


IMITATE = Schedule("imitate", objective.imitate_loss, objective.imitate_initial, batch_size=4)
SWAP = Schedule("swap", objective.swap_loss, objective.swap_initial, batch_size=2, steps=50, lr_final=LR_FINAL)


@dataclass(frozen=True)
class Budget:
    """Stop at `steps` or after `seconds` (from the start, init predictions included), whichever
    comes first. Neither given: the schedule's default (imitate: `epochs` x floor(K / batch) steps)."""

    steps: int | None = None
    seconds: float | None = None
    epochs: int = 5


@dataclass(frozen=True)
class PersonalizeReport:
    steps: int
    seconds: float
    losses: tuple[float, ...]          # total loss per step
    terms: tuple[StepLosses, ...] = ()
    cache_hit: bool = False
    cache_key: str | None = None
    face_used: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def decayed_lr(step: int, lr: float = LR_INIT, final: float = LR_FINAL, fix: int = LR_FIX_STEPS) -> float:
    """The lr used by the 0-based optimizer step `step` of the swap schedule.

    The official loop lowers the lr by (lr - final) / fix after every step whose 0-based index is
    > fix, so steps 0..fix+1 use `lr`, step fix+2 uses lr - d, ... (step 49, the last: lr - 23 d).
    Clamped at `final` for budgets longer than the official 50 steps.
    """
    decays = max(0, step - (fix + 1))
    return max(final, lr - decays * (lr - final) / fix)


def lr_at(schedule: Schedule, step: int, lr: float) -> float:
    return lr if schedule.lr_final is None else decayed_lr(step, lr, schedule.lr_final, schedule.lr_fix)


def batch_at(step: int, k: int, batch_size: int) -> Tensor:
    """The pairs of 0-based step `step`: the official DataLoader order (no shuffle, batch min(K, bs),
    drop_last), repeated. With K = 2 directions: both at once, or alternating when batch_size is 1."""
    bs = min(k, batch_size)
    first = (step % (k // bs)) * bs
    return torch.arange(first, first + bs)


def step_limit(schedule: Schedule, budget: Budget, k: int, batch_size: int) -> int | None:
    """Steps to run (None: until `budget.seconds` runs out)."""
    if budget.steps is not None:
        return budget.steps
    if schedule.steps is not None:
        return schedule.steps
    return budget.epochs * (k // min(k, batch_size)) if budget.seconds is None else None


@contextmanager
def flush_denormals():
    """Flush subnormal floats to zero on CPU while tuning, then restore the previous mode.

    Back-propagation through saturated heads produces subnormal products that make CPU kernels
    up to ~70x slower (measured: 10 s instead of 0.14 s per step on the test generator); values
    below 1.2e-38 do not matter to the result. Detected by probing, as torch has no getter.
    """
    was_on = float(torch.tensor([1e-39]) * torch.tensor([1.0])) == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


def tune(generator: LiquidWarpingGenerator, data: TuningSet, schedule: Schedule = IMITATE,
         budget: Budget = Budget(), lr: float = LR_INIT, betas: tuple[float, float] = (0.5, 0.999),
         batch_size: int | None = None, face: FaceLoss | None = None,
         progress: Progress | None = None) -> PersonalizeReport:
    """The optimisation loop (no cache): fine-tunes `generator` in place on `data`."""
    batch_size = schedule.batch_size if batch_size is None else batch_size
    with flush_denormals():
        start = time.perf_counter()
        init = schedule.initial(generator, data, batch_size)
        optim = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
        limit, k = step_limit(schedule, budget, len(data.pairs), batch_size), len(data.pairs)
        terms: list[StepLosses] = []
        while limit is None or len(terms) < limit:
            if budget.seconds is not None and time.perf_counter() - start >= budget.seconds:
                break
            for group in optim.param_groups:
                group["lr"] = lr_at(schedule, len(terms), lr)
            idx = batch_at(len(terms), k, batch_size)
            optim.zero_grad(set_to_none=True)
            loss, step = schedule.loss(generator, data, idx, init[idx], face)
            loss.backward()
            optim.step()
            terms.append(step)
            if progress is not None:
                progress(len(terms), limit, step.total)
    return PersonalizeReport(steps=len(terms), seconds=time.perf_counter() - start,
                             losses=tuple(t.total for t in terms), terms=tuple(terms), face_used=face is not None)


def face_or_note(use_face: bool | None, face: FaceLoss | None,
                 weights_dir) -> tuple[FaceLoss | None, str | None]:
    """The face-loss network to use (or None) and a note when it was skipped for missing weights."""
    if use_face is False:
        return None, None
    if face is not None:
        return face, None
    try:
        return FaceLoss(load_sphereface(None, weights_dir)), None
    except WeightsError as exc:
        if use_face:
            raise
        return None, "Face loss skipped: " + exc.paragraph()


def cache_key(generator: LiquidWarpingGenerator, data: TuningSet, schedule: Schedule, budget: Budget,
              lr: float, betas: tuple[float, float], batch_size: int, face: FaceLoss | None,
              generator_id: str | None = None) -> str:
    """The key of a tuned generator: the pairs' contents, the generator's weights and every setting."""
    settings = {"schedule": schedule.name, "budget": [budget.steps, budget.seconds, budget.epochs], "lr": lr,
                "betas": list(betas), "batch": min(len(data.pairs), batch_size),
                "face": module_fingerprint(face) if face is not None else None}
    return personalization_cache_key(tensor_digest(*data.tensors()), generator_id or module_fingerprint(generator),
                                     settings)


def personalize(generator: LiquidWarpingGenerator, data: TuningSet, schedule: Schedule = IMITATE,
                budget: Budget = Budget(), lr: float = LR_INIT, betas: tuple[float, float] = (0.5, 0.999),
                batch_size: int | None = None, use_face: bool | None = None, face: FaceLoss | None = None,
                weights_dir: str | os.PathLike | None = None, progress: Progress | None = None,
                cache: bool = True, cache_dir: str | os.PathLike | None = None,
                generator_id: str | None = None) -> PersonalizeReport:
    """Fine-tune `generator` in place on `data` by `schedule`, reusing a cached result.

    use_face: None = use the face loss when SphereFace weights are found (else a note says which
    file is missing), True = require them (WeightsError), False = off. `face` overrides the lookup.
    generator_id: identity of the generator's weights for the cache key (e.g. the checkpoint's
    sha256); default: a hash of its state dict. A seconds budget makes the cached result timing-dependent.
    """
    face, note = face_or_note(use_face, face, weights_dir)
    notes = (note,) if note else ()
    batch_size = schedule.batch_size if batch_size is None else batch_size
    key = cache_key(generator, data, schedule, budget, lr, betas, batch_size, face, generator_id) if cache else None
    if key is not None:
        t0 = time.perf_counter()
        hit = load_cached(key, cache_dir)
        if hit is not None and apply_cached(generator, hit[0]):
            return PersonalizeReport(steps=int(hit[1].get("steps", 0)), seconds=time.perf_counter() - t0,
                                     losses=tuple(hit[1].get("losses", ())), cache_hit=True, cache_key=key,
                                     face_used=face is not None, notes=notes)
    report = tune(generator, data, schedule, budget, lr, betas, batch_size, face, progress)
    if key is not None:
        save_cached(key, generator, cache_dir, {"steps": report.steps, "losses": list(report.losses),
                                                "seconds": report.seconds})
    return replace(report, cache_key=key, notes=notes)
