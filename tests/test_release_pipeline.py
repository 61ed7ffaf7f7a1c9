"""A user's whole path with the official release formats: zips -> `weights import` -> `imitate`.

The release is built here in the official layout from the mannequin's assets (official file
formats), an HMR checkpoint carrying the mannequin's SMPL arrays (regressor set to output a standing
person), and full-width random generator and DeepFill checkpoints saved as DataParallel `.pth` files.
"""

from __future__ import annotations

import subprocess
import sys

import torch

from e2e_world import standing_theta
from impersonator_cli.body.hmr import HMR
from impersonator_cli.body.mannequin import mannequin_arrays
from impersonator_cli.demo import build_demo
from impersonator_cli.video import probe
from official_ckpt import build_zip, checkpoints_members, pretrains_members, write_checkpoint


def _official_hmr(path):
    model = HMR(mannequin_arrays())
    with torch.no_grad():
        model.regressor.fc_blocks.fc3.weight.zero_()
        model.regressor.fc_blocks.fc3.bias.zero_()
        model.regressor.mean_theta.copy_(standing_theta())
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)  # torch 1.2's format
    return path


def test_import_the_release_then_imitate_with_the_default_networks(tmp_path):
    demo = build_demo(tmp_path / "demo", frames=3)
    assets = {p.name: p for p in demo.weights_dir.iterdir()}
    hmr = _official_hmr(tmp_path / "hmr_tf2pt.pth")
    generator = tmp_path / "G.pth"
    write_checkpoint(generator, "generator", seed=1, module_prefix=True)
    deepfill = tmp_path / "deepfill.pth"
    write_checkpoint(deepfill, "bg_inpaintor_deepfillv2", seed=2, module_prefix=True)
    pre = build_zip(tmp_path / "pretrains.zip", pretrains_members(assets, hmr, top="assets/pretrains"))
    ckpt = build_zip(tmp_path / "checkpoints.zip",
                     checkpoints_members({"lwb_imper_fashion_place": generator}, deepfill, top="outputs/checkpoints"))
    weights = tmp_path / "weights"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "impersonator_cli", *map(str, args)], capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)

    res = cli("weights", "import", pre, ckpt, "--weights-dir", weights)
    assert res.returncode == 0, res.stderr
    assert cli("weights", "verify", "--weights-dir", weights).returncode == 0
    out = tmp_path / "out.mp4"
    # No --source-smpl: HMR recovers the source; no --generator: the default official generator;
    # backgrounds by the imported DeepFill inpaintor.
    res = cli("imitate", "-s", demo.source, "-d", demo.motion, "-o", out, "--weights-dir", weights,
              "--device", "cpu", "--json", "-q")
    assert res.returncode == 0, res.stderr
    assert probe(out).frame_count == 3
    assert "Telea" not in res.stdout  # the DeepFill weights were used
