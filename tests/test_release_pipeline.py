"""A user's whole path with the official release formats: zips -> `weights import` -> `imitate`.

The release is built here in the official layout from the mannequin's assets (official file
formats), an HMR checkpoint carrying the mannequin's SMPL arrays (regressor set to output a standing
person), and full-width random generator and DeepFill checkpoints saved as DataParallel `.pth` files.
"""

from __future__ import annotations

import pytest
import torch

from support.e2e_world import standing_theta
from impersonator_cli.body.hmr import HMR
from impersonator_cli.demo.mannequin import mannequin_arrays
from impersonator_cli.io.probe import probe
from support.cli import run_cli
from support.official_ckpt import build_zip, checkpoints_members, pretrains_members, write_checkpoint


def _official_hmr(path):
    model = HMR(mannequin_arrays())
    with torch.no_grad():
        model.regressor.fc_blocks.fc3.weight.zero_()
        model.regressor.fc_blocks.fc3.bias.zero_()
        model.regressor.mean_theta.copy_(standing_theta())
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)  # torch 1.2's format
    return path


@pytest.mark.slow  # full-width networks: a 100 MB generator, a DeepFill inpaintor, a ResNet-50
def test_import_the_release_then_imitate_with_the_default_networks(demo_world, tmp_path, capsys, monkeypatch):
    demo = demo_world.files
    names = ("smpl_model.pkl", "smpl_faces.npy", "mapper.txt", "smpl_part_info.json", "front_facial.json", "head.json")
    assets = {name: demo.weights_dir / name for name in names}
    hmr = _official_hmr(tmp_path / "hmr_tf2pt.pth")
    generator = tmp_path / "G.pth"
    write_checkpoint(generator, "generator", seed=1, module_prefix=True)
    deepfill = tmp_path / "deepfill.pth"
    write_checkpoint(deepfill, "bg_inpaintor_deepfillv2", seed=2, module_prefix=True)
    pre = build_zip(tmp_path / "pretrains.zip", pretrains_members(assets, hmr, top="assets/pretrains"))
    ckpt = build_zip(tmp_path / "checkpoints.zip",
                     checkpoints_members({"lwb_imper_fashion_place": generator}, deepfill, top="outputs/checkpoints"))
    weights = tmp_path / "weights"

    monkeypatch.chdir(tmp_path)  # no ./weights folder to fall back on

    def cli(*args):
        return run_cli(capsys, *args)

    res = cli("weights", "import", pre, ckpt, "--weights-dir", weights)
    assert res.returncode == 0, res.stderr
    assert cli("weights", "verify", "--weights-dir", weights).returncode == 0
    out = tmp_path / "out.mp4"
    # No --source-smpl: HMR recovers the source; no --generator: the default official generator;
    # backgrounds by the imported DeepFill inpaintor.
    res = cli("imitate", "-s", demo.source, "-d", demo.motion, "-o", out, "--weights-dir", weights,
              "--device", "cpu", "--max-frames", 3, "--json", "-q")
    assert res.returncode == 0, res.stderr
    assert probe(out).frame_count == 3
    assert "Telea" not in res.stdout  # the DeepFill weights were used
