"""`python -m impersonator_cli.train DATA_ROOT -o OUT ...`, also under
`torchrun --nproc_per_node N -m impersonator_cli.train ...` (DDP; gloo on CPU, nccl on CUDA).

Rank 0 prints one line per logged step on stderr and the result as JSON on stdout; typed errors
become their one-paragraph message and exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from impersonator_cli.errors import ImpersonateError
from impersonator_cli.train.run import train
from impersonator_cli.train.trainer import LossWeights, TrainConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m impersonator_cli.train",
                                description="Train the Liquid Warping GAN on iPER-layout data.")
    p.add_argument("data_root", help="folder with images/, smpls/, train.txt, val.txt")
    p.add_argument("-o", "--output-dir", required=True, help="checkpoint folder")
    p.add_argument("--weights-dir", default=None, help="body assets, vgg19, sphereface")
    p.add_argument("--resume", default=None, help="a resume.pt to continue from")
    p.add_argument("--split", default="train")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4, help="per process")
    p.add_argument("--conv-dim", type=int, default=64)
    p.add_argument("--repeat-num", type=int, default=6)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4, help="for G and D")
    p.add_argument("--final-lr", type=float, default=2e-6)
    p.add_argument("--epochs-no-decay", type=int, default=5)
    p.add_argument("--epochs-decay", type=int, default=25)
    for name, value in vars(LossWeights()).items():
        p.add_argument(f"--lambda-{name}", type=float, default=value)
    p.add_argument("--mask-mse", action="store_true", help="MSE instead of BCE for the mask")
    p.add_argument("--no-vgg", action="store_true", help="L1 instead of VGG (no vgg19 weights)")
    p.add_argument("--no-face", action="store_true", help="no face term (no sphereface weights)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checksum-dir", default=None, help=argparse.SUPPRESS)  # tests: DDP sync check
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    lw = LossWeights(**{k: getattr(a, f"lambda_{k}") for k in vars(LossWeights())})
    return TrainConfig(
        data_root=a.data_root, output_dir=a.output_dir, weights_dir=a.weights_dir, split=a.split,
        image_size=a.image_size, batch_size=a.batch_size, conv_dim=a.conv_dim,
        repeat_num=a.repeat_num, ndf=a.ndf, lr_g=a.lr, lr_d=a.lr, final_lr=a.final_lr,
        epochs_no_decay=a.epochs_no_decay, epochs_decay=a.epochs_decay, loss_weights=lw,
        mask_bce=not a.mask_mse, use_vgg=not a.no_vgg, use_face=not a.no_face, device=a.device,
        precision=a.precision, seed=a.seed, num_workers=a.num_workers, max_steps=a.max_steps,
        save_every=a.save_every, log_every=a.log_every)


def format_record(r: dict) -> str:
    losses = " ".join(f"{k}={r[k]:.4f}" for k in ("g_total", "g_rec", "g_tsf", "g_adv", "d_total"))
    return (f"epoch {r['epoch']} iter {r['iter']}/{r['iters_per_epoch']} step {r['step']} "
            f"lr {r['lr_g']:.2e} {losses} {r['sec_per_step']:.2f}s/step")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = train(config_from_args(args), resume=args.resume,
                       log=lambda r: print(format_record(r), file=sys.stderr, flush=True),
                       checksum_dir=args.checksum_dir)
    except ImpersonateError as exc:
        print(f"{exc.title}: {exc.full_text()}", file=sys.stderr)
        return exc.exit_code
    if rank == 0:
        print(json.dumps({"output_dir": str(result.output_dir), "steps": result.steps,
                          "epochs": result.epoch, "losses": result.losses,
                          "resume": str(result.resume_path) if result.resume_path else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
