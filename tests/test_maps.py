"""Mesh asset parsing and the per-face maps (cond / front / back / parts) rendered from a raster."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from impersonator_cli.errors import WeightsError
from support.render_bench import uv_sphere
from impersonator_cli.render.maps import MeshMaps, load_mesh_assets, parse_mapper
from impersonator_cli.render.rasterize import face_vertices, rasterize

PART_NAMES = ["00_head", "01_torso", "02_left_leg", "03_right_leg", "04_left_arm", "05_right_arm",
              "06_left_foot", "07_right_foot", "08_left_hand", "09_right_hand"]


@pytest.fixture(scope="module")
def sphere_assets(tmp_path_factory):
    """A small sphere with UVs stored under shuffled vt indices, 10 parts, front/head lists."""
    folder = tmp_path_factory.mktemp("assets")
    verts, faces = uv_sphere(10, 12)
    vn = verts.numpy()
    rng = np.random.default_rng(0)
    V, F = verts.shape[0], faces.shape[0]
    uv = np.stack([np.arctan2(vn[:, 2], vn[:, 0]) / (2 * math.pi) + 0.5,
                   np.arccos(np.clip(vn[:, 1], -1, 1)) / math.pi], 1)
    perm = rng.permutation(V)                      # vt[k] = uv[perm[k]]  -> vertex i has vt inv[i]
    inv = np.argsort(perm)
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts.tolist()]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv[perm]]
    lines += ["vn 0 0 1"]
    lines += ["f " + " ".join(f"{a + 1}/{inv[a] + 1}/1" for a in f) for f in faces.tolist()]
    (folder / "mapper.txt").write_text("\n".join(lines) + "\n")
    face_part = np.concatenate([np.arange(10), rng.integers(0, 10, F - 10)])
    rng.shuffle(face_part)
    info = {name: {"vertex": [], "face": np.nonzero(face_part == i)[0].tolist()}
            for i, name in enumerate(PART_NAMES)}
    shuffled = dict(sorted(info.items(), key=lambda kv: rng.random()))  # file order != sorted
    (folder / "smpl_part_info.json").write_text(json.dumps(shuffled))
    head = np.nonzero(face_part == 0)[0]
    front = head[: len(head) // 2]
    (folder / "front_facial.json").write_text(json.dumps({"face": front.tolist()}))
    (folder / "head.json").write_text(json.dumps({"face": head.tolist()}))
    uv_round = np.asarray([[float(f"{u:.6f}"), float(f"{v:.6f}")] for u, v in uv])
    return dict(folder=folder, verts=verts, faces=faces, uv=uv_round, face_part=face_part,
                front=front, head=head)


@pytest.fixture(scope="module")
def rendered(sphere_assets):
    maps = MeshMaps.from_assets(load_mesh_assets(sphere_assets["folder"]))
    f2v = face_vertices(sphere_assets["verts"].float()[None] * 0.8, sphere_assets["faces"])
    raster = rasterize(f2v, 48)
    return maps, raster


def test_mapper_parse_uses_vt_indices(sphere_assets):
    vt, faces_v, faces_vt = parse_mapper(sphere_assets["folder"] / "mapper.txt")
    assert np.array_equal(faces_v, sphere_assets["faces"].numpy())
    assert np.allclose(vt[faces_vt], sphere_assets["uv"][faces_v])


def test_cond_map_values(sphere_assets, rendered):
    maps, raster = rendered
    cond = maps.render_cond(raster.face_index)[0].numpy()            # 3 x N x N
    fim = raster.face_index[0].numpy()
    body = fim >= 0
    uv = sphere_assets["uv"][sphere_assets["faces"].numpy()]        # F x 3 x 2
    expected = np.stack([(uv[:, 0, 0] + uv[:, 1, 0]) / 2, 1 - (uv[:, 0, 1] + uv[:, 1, 1]) / 2], 1)
    assert body.sum() > 500
    assert np.allclose(cond[:2, body].T, expected[fim[body]], atol=1e-6)
    assert np.all(cond[2, body] == 0)
    assert np.all(cond[:, ~body] == np.array([0, 0, 1.0])[:, None])


def test_part_map_partitions_body_pixels(sphere_assets, rendered):
    maps, raster = rendered
    assert maps.part_names == tuple(PART_NAMES)
    par = maps.render_parts(raster.face_index)[0]                    # 11 x N x N
    fim = raster.face_index[0]
    assert torch.equal(par.sum(0), torch.ones_like(par[0]))          # exactly one channel each
    assert torch.equal(par[10], (fim < 0).float())
    face_part = torch.from_numpy(sphere_assets["face_part"])
    for i in range(10):
        expect = (fim >= 0) & (face_part[fim.clamp(min=0)] == i)
        assert torch.equal(par[i], expect.float())
    assert (par[:10].sum((1, 2)) > 0).sum() >= 5


def test_front_and_back_maps(sphere_assets, rendered):
    maps, raster = rendered
    fim = raster.face_index[0]
    front = torch.zeros(maps.num_faces + 1)
    front[torch.from_numpy(sphere_assets["front"])] = 1
    head = torch.zeros(maps.num_faces + 1)
    head[torch.from_numpy(sphere_assets["head"])] = 1
    assert torch.equal(maps.render_front(raster.face_index)[0, 0], front[fim])
    assert torch.equal(maps.render_back(raster.face_index)[0, 0], head[fim] * (1 - front[fim]))
    assert torch.equal(maps.render(raster.face_index, "back"), maps.render_back(raster.face_index))


def test_tables_are_buffers_and_background_row_is_last(rendered):
    maps, _ = rendered
    state = maps.state_dict()
    assert set(state) >= {"cond_table", "front_table", "back_table", "part_table", "face_part"}
    assert torch.equal(maps.cond_table[-1], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(maps.part_table[-1], torch.eye(11)[10])
    assert maps.cond_table.shape[0] == maps.num_faces + 1


def _copy_assets(src, dst):
    for name in ("mapper.txt", "smpl_part_info.json", "front_facial.json", "head.json"):
        (dst / name).write_text((src / name).read_text())


def test_unknown_mapper_line_is_an_error_naming_file_and_line(sphere_assets, tmp_path):
    _copy_assets(sphere_assets["folder"], tmp_path)
    lines = (tmp_path / "mapper.txt").read_text().splitlines()
    lines.insert(2, "usemtl skin")
    (tmp_path / "mapper.txt").write_text("\n".join(lines))
    with pytest.raises(WeightsError) as err:
        load_mesh_assets(tmp_path)
    assert "mapper.txt" in str(err.value) and "line 3" in str(err.value)


@pytest.mark.parametrize("bad", ["f 1/1/1 2/2/1", "f 1 2 3", "vt 0.5"])
def test_malformed_mapper_lines(tmp_path, bad):
    (tmp_path / "mapper.txt").write_text(f"v 0 0 0\nvt 0 0\n{bad}\n")
    with pytest.raises(WeightsError, match="line 3"):
        parse_mapper(tmp_path / "mapper.txt")


def _edit_parts(sphere_assets, tmp_path, edit):
    _copy_assets(sphere_assets["folder"], tmp_path)
    info = json.loads((tmp_path / "smpl_part_info.json").read_text())
    edit(info)
    (tmp_path / "smpl_part_info.json").write_text(json.dumps(info))


def test_parts_must_cover_every_face(sphere_assets, tmp_path):
    _edit_parts(sphere_assets, tmp_path, lambda info: info["01_torso"]["face"].pop())
    with pytest.raises(WeightsError, match="smpl_part_info.json.*cover"):
        load_mesh_assets(tmp_path)


def test_parts_must_not_overlap(sphere_assets, tmp_path):
    def overlap(info):
        info["00_head"]["face"].append(info["01_torso"]["face"][0])
    _edit_parts(sphere_assets, tmp_path, overlap)
    with pytest.raises(WeightsError, match="repeats"):
        load_mesh_assets(tmp_path)


def test_face_index_out_of_range_and_missing_file(sphere_assets, tmp_path):
    _copy_assets(sphere_assets["folder"], tmp_path)
    (tmp_path / "head.json").write_text(json.dumps({"face": [10**6]}))
    with pytest.raises(WeightsError, match="head.json"):
        load_mesh_assets(tmp_path)
    (tmp_path / "front_facial.json").unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_mesh_assets(tmp_path)
