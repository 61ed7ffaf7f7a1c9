"""How to get the weights: the one text shown wherever their absence is met (the WeightsError of a
job, `impersonate doctor`, `impersonate weights list`). Facts from reference/impersonator_spec.md:
the official project publishes `pretrains.zip` and `checkpoints.zip` (its download links are in its
README; there is no official Hugging Face repo); the SMPL data they carry is licence-gated.
"""

from __future__ import annotations

from pathlib import Path

OFFICIAL_PROJECT = "github.com/svip-lab/impersonator"
SMPL_SITE = "https://smpl.is.tue.mpg.de"
IMPORT_COMMAND = "impersonate weights import pretrains.zip checkpoints.zip"


def import_command(weights_dir: str | Path | None = None) -> str:
    """The exact import command; with the folder a job was pointed at when there was one."""
    return IMPORT_COMMAND + (f" --weights-dir {weights_dir}" if weights_dir is not None else "")


def weights_route(into: Path, weights_dir: str | Path | None = None) -> str:
    """One paragraph: which official files, where they are published, the SMPL licence, the import
    command (writing to `into`), and what works without them."""
    where = "that folder" if weights_dir is not None else f"{into}, found from any folder"
    return (
        "Real photos need the official Impersonator release: pretrains.zip (HMR, SMPL mesh assets) and "
        "checkpoints.zip (generators, background inpaintor), from the official Impersonator project's "
        f"download page (see the README of {OFFICIAL_PROJECT}). The SMPL data in them needs its own "
        f"licence: register at {SMPL_SITE} first. Then run `{import_command(weights_dir)}` once (it checks "
        f"and converts them into {where}). Without them, `impersonate demo` runs every job on a generated "
        "mannequin, and `--generator none --source-smpl SRC.motion.npz` with a .motion.npz driver warps "
        "without HMR or GAN weights (mesh assets: --weights-dir impersonate-demo/assets after the demo)."
    )
