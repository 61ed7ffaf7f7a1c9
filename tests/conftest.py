"""Shared fixtures: everything a test needs is generated here; nothing is downloaded."""

from __future__ import annotations

import os

import pytest
import torch

# Keep the suite predictable on small CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def mannequin_kit(tmp_path_factory):
    """(smpl, maps, corner_uv F x 3 x 2, texture 3 x 256 x 256 in [0, 1]) of the mannequin, loaded
    through the same loaders as the official assets."""
    from impersonator_cli.body.mannequin import mannequin_arrays, mannequin_texture, mannequin_uv, write_mannequin_assets
    from impersonator_cli.body.smpl import SMPL
    from impersonator_cli.render.maps import MeshMaps, load_mesh_assets
    from impersonator_cli.render.texture import face_corner_uv

    folder = tmp_path_factory.mktemp("mannequin-assets")
    write_mannequin_assets(folder)
    maps = MeshMaps.from_assets(load_mesh_assets(folder))
    smpl = SMPL(mannequin_arrays())
    vt, face_vt = mannequin_uv()
    corner_uv = face_corner_uv(torch.from_numpy(vt).float(), torch.from_numpy(face_vt))
    texture = torch.from_numpy(mannequin_texture(256)).permute(2, 0, 1).float() / 255
    return smpl, maps, corner_uv, texture
