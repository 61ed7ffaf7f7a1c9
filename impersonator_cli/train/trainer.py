"""Liquid Warping GAN training (spec §6.3, §6.4): one G step then one D step per iteration.

Generator loss = λ_D L_adv + λ_rec L1(Î_src, I_src) + λ_tsf VGG(Î_tsf, I_tsf) + λ_face Face(Î_tsf,
I_tsf; target head box) + λ_mask BCE(concat(A_src, A_tsf), targets) + λ_smooth TV(concat(A_src,
A_tsf)), with the iPER script's weights 1 / 10 / 10 / 5 / 1 / 1 (style 0). The PatchGAN sees
concat(image, cond_tgt); LSGAN labels real 1, fake -1, generator target 0. Adam 2e-4,
betas (0.5, 0.999) for both; the LR is constant for `epochs_no_decay` epochs, then drops linearly
to `final_lr` over `epochs_decay` epochs (stepped after every epoch). Weights start N(0, 0.02).

Loss networks: VGG-19 (`vgg19`) and SphereFace (`sphereface`) come from the weights folder. When
one is missing, training refuses and names the file, unless it was switched off explicitly
(`use_vgg=False`: the transfer term becomes λ_tsf L1(Î_tsf, I_tsf), a deviation that keeps the
transfer stream supervised; `use_face=False`: no face term).

Checkpoints (rank 0): after each epoch e (1-based) `net_epoch_<e>_id_{G,D}.pth` and
`opt_epoch_<e>_id_{G,D}.pth`, plain state dicts without `module.`, plus `resume.pt` (models,
optimisers, schedulers, grad scalers, epoch/step counters and every rank's RNG states), written
atomically; resuming from it reproduces the uninterrupted run's next step exactly.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from impersonator_cli.weights import registry, store
from impersonator_cli.errors import UsageError, WeightsError
from impersonator_cli.gan import losses as L
from impersonator_cli.gan.blocks import init_weights
from impersonator_cli.gan.discriminator import PatchDiscriminator
from impersonator_cli.gan.generator import LiquidWarpingGenerator, compose
from impersonator_cli.train.dataset import InputBuilder, TrainInputs

RESUME_FILE = "resume.pt"
LOG_FILE = "train_log.jsonl"
RESUME_FORMAT = "impersonate-train-resume/1"
LOSS_NAMES = ("g_adv", "g_rec", "g_tsf", "g_face", "g_mask", "g_smooth", "g_total",
              "d_real", "d_fake", "d_total")
Log = Callable[[dict], None]


@dataclass(frozen=True)
class LossWeights:
    """λ of the iPER script (`scripts/train_iPER.sh`)."""

    adv: float = 1.0
    rec: float = 10.0
    tsf: float = 10.0
    face: float = 5.0
    mask: float = 1.0
    smooth: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved into resume.pt and checked on resume."""

    data_root: str
    output_dir: str
    weights_dir: Optional[str] = None  # body assets + vgg19 / sphereface
    split: str = "train"
    image_size: int = 256
    batch_size: int = 4  # per process
    conv_dim: int = 64
    repeat_num: int = 6
    ndf: int = 64
    d_layers: int = 4
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    epochs_no_decay: int = 5
    epochs_decay: int = 25
    final_lr: float = 2e-6
    loss_weights: LossWeights = field(default_factory=LossWeights)
    mask_bce: bool = True
    use_vgg: bool = True
    use_face: bool = True
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU
    seed: int = 0
    num_workers: int = 2
    max_steps: Optional[int] = None  # stop (and write resume.pt) after this many steps in total
    save_every: int = 0  # also write resume.pt every that many steps (0: only per epoch)
    log_every: int = 10

    @property
    def epochs(self) -> int:
        return self.epochs_no_decay + self.epochs_decay

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["loss_weights"] = LossWeights(**d.get("loss_weights", {}))
        d["betas"] = tuple(d.get("betas", (0.5, 0.999)))
        return cls(**d)


class LinearDecay:
    """LR factor after `k` finished epochs: 1 for k <= n_keep, then 1 - (k - n_keep)(1 - r)/n_decay
    down to r = final_lr / lr (a picklable LambdaLR callable)."""

    def __init__(self, n_keep: int, n_decay: int, final_ratio: float):
        self.n_keep, self.n_decay, self.final_ratio = n_keep, max(1, n_decay), final_ratio

    def __call__(self, k: int) -> float:
        done = min(max(0, k - self.n_keep), self.n_decay)
        return 1.0 - done * (1.0 - self.final_ratio) / self.n_decay


@dataclass(frozen=True)
class Dist:
    """Process group facts (world 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """None (fp32) or the autocast dtype; fp16/bf16 autocast only on CUDA."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in ("fp32", "fp16", "bf16"):
        raise UsageError(f"Unknown precision '{precision}'", hint="Use auto, fp32, fp16 or bf16.")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        raise UsageError(f"Mixed precision ({precision}) training needs a CUDA device",
                         hint="Use --precision fp32 on this device.")
    return torch.float16 if precision == "fp16" else torch.bfloat16


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, DDP) else m


class Trainer:
    """Networks, optimisers and one training step. perceptual(x, y) / face(x, y, boxes) are the
    optional loss callables (None: L1 transfer term / no face term)."""

    def __init__(self, cfg: TrainConfig, builder: InputBuilder, device: torch.device,
                 perceptual: Optional[Callable] = None, face: Optional[Callable] = None,
                 dist_info: Dist = Dist()):
        self.cfg, self.builder, self.device, self.dist = cfg, builder.to(device), device, dist_info
        self.perceptual, self.face = perceptual, face
        self.amp = autocast_dtype(cfg.precision, device)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        G = init_weights(LiquidWarpingGenerator(conv_dim=cfg.conv_dim, repeat_num=cfg.repeat_num))
        D = init_weights(PatchDiscriminator(6, cfg.ndf, cfg.d_layers))
        G, D = G.to(device).train(), D.to(device).train()
        if dist_info.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
        self.G, self.D = G, D
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(
            self.opt_g, LinearDecay(cfg.epochs_no_decay, cfg.epochs_decay, cfg.final_lr / cfg.lr_g))
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(
            self.opt_d, LinearDecay(cfg.epochs_no_decay, cfg.epochs_decay, cfg.final_lr / cfg.lr_d))
        fp16 = self.amp == torch.float16
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=fp16)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=fp16)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0

    # --------------------------------------------------------------------------- one iteration
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def _generator_losses(self, x: TrainInputs) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        w = self.cfg.loss_weights
        with self._autocast():
            bg, p_src, a_src, p_tsf, a_tsf = self.G(x.bg_in, x.src_in, x.tsf_in, x.T)
            fake_src, fake_tsf = compose(p_src, a_src, bg).float(), compose(p_tsf, a_tsf, bg).float()
            d_fake = _unwrap(self.D)(torch.cat([fake_tsf, x.cond_tgt], 1))
            tsf = (self.perceptual(fake_tsf, x.tgt_img) if self.perceptual is not None
                   else L.l1(fake_tsf, x.tgt_img))
            face = (self.face(fake_tsf, x.tgt_img, x.head_boxes) if self.face is not None
                    else fake_tsf.new_zeros(()))
        attention = torch.cat([a_src, a_tsf], 1).float()
        parts = {"g_adv": L.lsgan_g_loss(d_fake.float()), "g_rec": L.l1(fake_src, x.src_img),
                 "g_tsf": tsf.float(), "g_face": face.float(),
                 "g_mask": L.mask_loss(attention, x.mask_targets, bce=self.cfg.mask_bce),
                 "g_smooth": L.tv_loss(attention)}
        total = (w.adv * parts["g_adv"] + w.rec * parts["g_rec"] + w.tsf * parts["g_tsf"]
                 + w.face * parts["g_face"] + w.mask * parts["g_mask"] + w.smooth * parts["g_smooth"])
        return total, fake_tsf.detach(), parts

    def step(self, images: Tensor, smpls: Tensor) -> dict[str, float]:
        """One G step then one D step. images: B x 2 x 3 x N x N, smpls: B x 2 x 85 -> losses."""
        x = self.builder(images.to(self.device, non_blocking=True),
                         smpls.to(self.device, non_blocking=True))
        _unwrap(self.D).requires_grad_(False)
        loss_g, fake, parts = self._generator_losses(x)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        _unwrap(self.D).requires_grad_(True)
        real_in, fake_in = torch.cat([x.tgt_img, x.cond_tgt], 1), torch.cat([fake, x.cond_tgt], 1)
        with self._autocast():
            real_s, fake_s = self.D(torch.cat([real_in, fake_in], 0)).float().chunk(2)
        d_real, d_fake = ((real_s - 1) ** 2).mean(), ((fake_s + 1) ** 2).mean()
        loss_d = L.lsgan_d_loss(real_s, fake_s)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        parts.update(g_total=loss_g, d_real=d_real, d_fake=d_fake, d_total=loss_d)
        values = torch.stack([parts[k].detach().float() for k in LOSS_NAMES])
        if self.dist.world > 1:
            dist.all_reduce(values)
            values /= self.dist.world
        return dict(zip(LOSS_NAMES, values.tolist()))

    # --------------------------------------------------------------------------- state
    def checksum(self) -> float:
        """Sum of |w| over G and D weights in float64: equal on every rank of an in-sync run."""
        params = list(_unwrap(self.G).parameters()) + list(_unwrap(self.D).parameters())
        return float(sum(p.detach().double().abs().sum() for p in params))

    def state_dict(self) -> dict:
        return {"format": RESUME_FORMAT, "config": _jsonable(asdict(self.cfg)),
                "G": _unwrap(self.G).state_dict(), "D": _unwrap(self.D).state_dict(),
                "opt_G": self.opt_g.state_dict(), "opt_D": self.opt_d.state_dict(),
                "sched_G": self.sched_g.state_dict(), "sched_D": self.sched_d.state_dict(),
                "scaler_G": self.scaler_g.state_dict(), "scaler_D": self.scaler_d.state_dict(),
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "rng": gather_rng_states(self.dist)}

    def load_state_dict(self, state: dict) -> None:
        _unwrap(self.G).load_state_dict(state["G"])
        _unwrap(self.D).load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_G"])
        self.opt_d.load_state_dict(state["opt_D"])
        self.sched_g.load_state_dict(state["sched_G"])
        self.sched_d.load_state_dict(state["sched_D"])
        self.scaler_g.load_state_dict(state["scaler_G"])
        self.scaler_d.load_state_dict(state["scaler_D"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])

    def save_resume(self, folder: str | Path) -> Optional[Path]:
        """Write resume.pt (rank 0 writes; every rank takes part in gathering the RNG states)."""
        state = self.state_dict()
        return _atomic_save(state, Path(folder) / RESUME_FILE) if self.dist.main else None

    def load_resume(self, path: str | Path) -> None:
        state = torch.load(Path(path), map_location=self.device, weights_only=True)
        if state.get("format") != RESUME_FORMAT:
            raise UsageError(f"{path} is not a training resume file",
                             hint=f"Pass the {RESUME_FILE} written by `impersonate train`.")
        self.load_state_dict(state)

    def save_epoch(self, folder: str | Path, epoch: int) -> None:
        """The official per-epoch files (plain state dicts; rank 0 only)."""
        if not self.dist.main:
            return
        folder = Path(folder)
        for tag, obj in (("net", "G"), ("net", "D"), ("opt", "G"), ("opt", "D")):
            sd = {"G": _unwrap(self.G), "D": _unwrap(self.D)}[obj].state_dict() if tag == "net" \
                else {"G": self.opt_g, "D": self.opt_d}[obj].state_dict()
            _atomic_save(sd, folder / f"{tag}_epoch_{epoch}_id_{obj}.pth")


# ------------------------------------------------------------------------------- RNG states

def rng_state() -> dict:
    """python, numpy, torch CPU and CUDA generator states as tensors/lists (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [kind, torch.from_numpy(
        keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(), "cuda": []}
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def gather_rng_states(d: Dist) -> list[dict]:
    """Every rank's RNG states, in rank order (a list of one outside torchrun)."""
    mine = rng_state()
    if d.world == 1:
        return [mine]
    out: list = [None] * d.world
    dist.all_gather_object(out, mine)
    return out


def _atomic_save(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def _jsonable(d):
    return json.loads(json.dumps(d))


# ------------------------------------------------------------------------------- loss networks

def load_loss_networks(cfg: TrainConfig, device: torch.device) -> tuple[Optional[Callable],
                                                                        Optional[Callable]]:
    """(perceptual, face) callables, or None where switched off. WeightsError names a missing file."""
    perceptual = face = None
    if cfg.use_vgg:
        _require("vgg19", cfg.weights_dir, "--no-vgg (use L1 for the transfer term)")
        perceptual = L.PerceptualLoss(L.load_vgg19(weights_dir=cfg.weights_dir, device=device))
    if cfg.use_face:
        _require("sphereface", cfg.weights_dir, "--no-face (drop the face term)")
        face = L.FaceLoss(L.load_sphereface(weights_dir=cfg.weights_dir, device=device))
    return perceptual, face


def _require(name: str, weights_dir, flag: str) -> None:
    if store.find(name, weights_dir) is None:
        row = registry.get(name)
        raise WeightsError(
            f"Training needs the {name} weights ({row.local_name}) for its loss, and they were not "
            "found", hint=f"{row.how_to_get()} Or train without that term: pass {flag}.")


def append_log(folder: str | Path, record: dict) -> None:
    with open(Path(folder) / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def now() -> float:
    return time.perf_counter()
