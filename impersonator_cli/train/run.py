"""The training run: process group (torchrun), data loader, epochs, logging and checkpoints.

Under torchrun (WORLD_SIZE > 1) every rank joins the process group (nccl on CUDA, gloo on CPU),
wraps G and D in DistributedDataParallel and reads its shard through a DistributedSampler; losses
are averaged over ranks; only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from impersonator_cli.errors import UsageError
from impersonator_cli.train.dataset import InputBuilder
from impersonator_cli.train.trainer import Dist, Log, TrainConfig, Trainer, append_log, load_loss_networks, now

@dataclass(frozen=True)
class TrainResult:
    """steps: global steps done; epoch: finished epochs; losses: the last step's losses."""

    output_dir: Path
    steps: int
    epoch: int
    losses: dict
    resume_path: Optional[Path]


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    from impersonator_cli.devices import resolve_device

    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local), device


def make_loader(dataset, cfg: TrainConfig, d: Dist, device: torch.device):
    from torch.utils.data import DataLoader

    from impersonator_cli.train.dataset import EpochSampler

    sampler = EpochSampler(dataset, d.world, d.rank, seed=cfg.seed, shuffle=True, drop_last=True)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    return sampler, loader


def steps_per_epoch(sampler, batch_size: int) -> int:
    return sampler.num_samples // batch_size


def train(cfg: TrainConfig, resume: str | Path | None = None, log: Optional[Log] = None,
          checksum_dir: str | Path | None = None) -> TrainResult:
    """Train (single process, or one rank under torchrun). `log(record)` gets rank 0's records;
    `checksum_dir` makes every rank write checksum_rank<r>.json (weights after the last step)."""
    from impersonator_cli.pipeline.rig import load_body_model
    from impersonator_cli.train.dataset import IPerDataset

    d, device = init_distributed(cfg.device)
    try:
        random.seed(cfg.seed + d.rank)
        np.random.seed(cfg.seed + d.rank)
        out = Path(cfg.output_dir)
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
        body = load_body_model(cfg.weights_dir, device)
        perceptual, face = load_loss_networks(cfg, device)
        dataset = IPerDataset(cfg.data_root, cfg.split, cfg.image_size, cfg.seed)
        trainer = Trainer(cfg, InputBuilder(body.smpl, body.maps), device, perceptual, face, d)
        if resume is not None:
            trainer.load_resume(resume)
        sampler, loader = make_loader(dataset, cfg, d, device)
        if steps_per_epoch(sampler, cfg.batch_size) == 0:
            raise UsageError(f"The data set has {len(dataset)} pairs: too few for batches of "
                             f"{cfg.batch_size} on {d.world} process(es)",
                             hint="Use a smaller --batch-size or add videos.")
        losses = _run_epochs(trainer, sampler, loader, out, log)
        resume_path = trainer.save_resume(out)
        if checksum_dir is not None:
            Path(checksum_dir).mkdir(parents=True, exist_ok=True)
            (Path(checksum_dir) / f"checksum_rank{d.rank}.json").write_text(json.dumps(
                {"rank": d.rank, "step": trainer.global_step, "checksum": trainer.checksum()}))
        return TrainResult(out, trainer.global_step, trainer.epoch, losses, resume_path)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run_epochs(t: Trainer, sampler, loader, out: Path, log: Optional[Log]) -> dict:
    cfg, losses = t.cfg, {}
    per_epoch = steps_per_epoch(sampler, cfg.batch_size)
    while t.epoch < cfg.epochs:
        sampler.set_epoch(t.epoch, skip=t.step_in_epoch * cfg.batch_size)
        tick = now()
        for batch in loader:
            if cfg.max_steps is not None and t.global_step >= cfg.max_steps:
                return losses
            losses = t.step(batch["images"], batch["smpls"])
            t.step_in_epoch += 1
            t.global_step += 1
            last = cfg.max_steps is not None and t.global_step >= cfg.max_steps
            if t.dist.main and (t.global_step % max(1, cfg.log_every) == 0 or last):
                record = {"step": t.global_step, "epoch": t.epoch + 1, "iter": t.step_in_epoch,
                          "iters_per_epoch": per_epoch, "lr_g": t.opt_g.param_groups[0]["lr"],
                          "lr_d": t.opt_d.param_groups[0]["lr"], "sec_per_step": now() - tick,
                          **losses}
                append_log(out, record)
                if log is not None:
                    log(record)
            tick = now()
            if cfg.save_every and t.global_step % cfg.save_every == 0 and not last:
                t.save_resume(out)
            if last:
                return losses
        t.step_in_epoch = 0
        t.epoch += 1
        with warnings.catch_warnings():  # after a resume the optimiser has not stepped yet
            warnings.simplefilter("ignore", UserWarning)
            t.sched_g.step()
            t.sched_d.step()
        t.save_epoch(out, t.epoch)
        t.save_resume(out)
    return losses
