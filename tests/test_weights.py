"""Weights registry, lookup order, manifest/verify, safe checkpoint reading, offline download, `weights list`."""

from __future__ import annotations

import json
import os
import pickle
import socket
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from impersonator_cli.weights import registry
from impersonator_cli.weights import store as weights
from impersonator_cli.weights.download import download
from impersonator_cli.weights.checkpoints import (
    expected_shapes, load_config, load_converted, load_official_state_dict, save_safetensors,
)
from impersonator_cli.errors import UsageError, WeightsError
from impersonator_cli.cli.weights import weights_app
from support.official_ckpt import SPHEREFACE_FC6, write_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    """No weights folder from the environment, an empty HF cache, and no network at all."""
    monkeypatch.delenv(weights.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.delenv(weights.ENV_WEIGHTS_REPO, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # the per-user weights folder, empty
    monkeypatch.chdir(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path


# ---------------------------------------------------------------- registry


def test_registry_rows_are_consistent():
    names = [r.name for r in registry.REGISTRY]
    assert len(set(names)) == len(names)
    local = [f for r in registry.REGISTRY for f in r.local_files]
    assert len(set(local)) == len(local), "two artefacts would overwrite each other's files"
    assert registry.get(registry.DEFAULT_GENERATOR).required
    for row in registry.REGISTRY:
        if row.is_network:
            assert row.local_name.endswith(".safetensors") and expected_shapes(row.section)
    assert registry.get("smpl_model").licence_gated and "smpl.is.tue.mpg.de" in registry.get("smpl_model").licence
    # the VGG-19 table matches torchvision's parameter count (143,667,240)
    assert sum(int(torch.Size(s).numel()) for s in expected_shapes("vgg19").values()) == 143_667_240


def test_unknown_name_lists_valid_names():
    with pytest.raises(WeightsError) as err:
        registry.get("generator_xl")
    assert "generator_xl" in str(err.value) and "generator_fashion_place" in str(err.value)
    assert err.value.exit_code == 4


# ---------------------------------------------------------------- lookup order


def test_resolution_order(clean_env, monkeypatch):
    explicit, env, cwd_dir = clean_env / "explicit", clean_env / "env", clean_env / "weights"
    for d in (explicit, env, cwd_dir):
        d.mkdir()
        (d / "smpl_faces.npy").write_bytes(d.name.encode())
    weights.write_manifest(cwd_dir, {"files": {}})  # ./weights counts only with a manifest.json
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(env))
    assert weights.resolve("smpl_faces", explicit).read_bytes() == b"explicit"
    assert weights.resolve("smpl_faces").read_bytes() == b"env"
    monkeypatch.delenv(weights.ENV_WEIGHTS_DIR)
    assert weights.resolve("smpl_faces") == (clean_env / "weights" / "smpl_faces.npy").absolute()
    (explicit / "smpl_faces.npy").unlink()  # not in the explicit folder: the chain goes on
    assert weights.resolve("smpl_faces", explicit).read_bytes() == b"weights"


def test_missing_file_says_where_it_looked_and_how_to_get_it(clean_env):
    with pytest.raises(WeightsError) as err:
        weights.resolve("hmr", clean_env / "nowhere")
    text = str(err.value)
    assert "hmr.safetensors" in text and str(clean_env / "nowhere") in text and "Hugging Face cache" in text
    assert "impersonate weights import pretrains.zip checkpoints.zip" in text and "smpl.is.tue.mpg.de" in text


def _fake_hf_cache(root: Path, repo_id: str, files: dict[str, bytes], tag: str = "v1.0") -> None:
    """The on-disk layout huggingface_hub uses (snapshots/<commit>/<file>, refs/<tag>)."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / tag).write_text(COMMIT)


def test_hf_cache_is_the_last_fallback(clean_env, monkeypatch):
    _fake_hf_cache(clean_env / "hf_home", "someone/impersonate-weights", {"mapper.txt": b"from-cache"})
    assert weights.find("uv_mapper") is None  # the repo was never recorded: the cache is not scanned blindly
    monkeypatch.setenv(weights.ENV_WEIGHTS_REPO, f"someone/impersonate-weights@{COMMIT}")
    assert weights.resolve("uv_mapper").read_bytes() == b"from-cache"
    (clean_env / "weights").mkdir()
    (clean_env / "weights" / "mapper.txt").write_bytes(b"local")
    weights.write_manifest(clean_env / "weights", {"files": {}})
    assert weights.resolve("uv_mapper").read_bytes() == b"local"


# ---------------------------------------------------------------- manifest / verify


def test_verify_detects_a_flipped_byte_and_a_missing_file(clean_env):
    folder = clean_env / "w"
    folder.mkdir()
    data = {"smpl_faces.npy": os.urandom(3000), "head.json": b'{"face": [1, 2, 3]}'}
    entries = {}
    for name, blob in data.items():
        (folder / name).write_bytes(blob)
        entries[name] = weights.manifest_entry(folder / name, name, "test")
    weights.write_manifest(folder, {"files": entries})
    assert weights.verify(folder).ok
    blob = bytearray(data["smpl_faces.npy"])
    blob[1234] ^= 0x01
    (folder / "smpl_faces.npy").write_bytes(bytes(blob))
    (folder / "head.json").unlink()
    status = {f.file: f.status for f in weights.verify(folder).files}
    assert status == {"smpl_faces.npy": "mismatch", "head.json": "missing"}
    result = CliRunner().invoke(weights_app, ["verify", "--weights-dir", str(folder)])
    assert result.exit_code == 4 and "mismatch" in result.output


def test_verify_without_manifest_says_what_to_do(clean_env):
    with pytest.raises(WeightsError, match="weights import"):
        weights.verify(clean_env)


# ---------------------------------------------------------------- reading official checkpoints


def test_official_checkpoint_module_prefix_fc6_and_wrapper(tmp_path):
    path = tmp_path / "sphere20a_20171020.pth"
    ref = write_checkpoint(path, "face_sphere20a", module_prefix=True, wrapped=True, seed=3)
    raw = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in raw) and "module.fc6.weight" in raw
    sd = load_official_state_dict(path, "face_sphere20a")
    assert list(sd) == list(expected_shapes("face_sphere20a"))
    assert not any(k.startswith("fc6") for k in sd) and SPHEREFACE_FC6
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_missing_num_batches_tracked_is_filled_with_zero(tmp_path):
    path = tmp_path / "deepfill.pth"
    ref = write_checkpoint(path, "bg_inpaintor_deepfillv2", drop_num_batches=True, legacy=True, seed=5)
    sd = load_official_state_dict(path, "bg_inpaintor_deepfillv2")
    counters = [k for k in sd if k.endswith("num_batches_tracked")]
    assert len(counters) == 35 and all(int(sd[k]) == 0 and sd[k].dtype == torch.int64 for k in counters)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    path = tmp_path / "deepfill.pth"
    write_checkpoint(path, "bg_inpaintor_deepfillv2", wrong_shape="coarse_net.0.conv2d.weight")
    with pytest.raises(WeightsError) as err:
        load_official_state_dict(path, "bg_inpaintor_deepfillv2")
    text = str(err.value)
    assert "deepfill.pth" in text and "coarse_net.0.conv2d.weight" in text
    assert "expected [32, 4, 5, 5], found [33, 4, 5, 5]" in text


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_pickle_that_runs_code_is_refused_without_side_effect(tmp_path, container):
    marker, path = tmp_path / "pwned.txt", tmp_path / "hmr_tf2pt.pth"
    if container == "torch_zip":
        torch.save({"resnet.conv1.weight": torch.zeros(1), "x": _Evil(marker)}, path)
        assert zipfile.is_zipfile(path)
    else:
        path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(WeightsError) as err:
        load_official_state_dict(path, "hmr")
    assert "hmr_tf2pt.pth" in str(err.value) and "Refused" in str(err.value)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Evil(marker)))  # the payload is real: an unsafe loader would run it
    assert marker.read_text() == "pwned"


def test_safetensors_round_trip_and_config(tmp_path):
    sd = {k: torch.full(s, float(i)) for i, (k, s) in enumerate(expected_shapes("discriminator").items())}
    sd["model.0.bias"] = sd["model.0.weight"].view(-1)[:64]  # shares storage: must still save
    path = save_safetensors(sd, tmp_path / "disc", {"section": "discriminator", "name": "disc"})
    assert path.name == "disc.safetensors" and (tmp_path / "disc.json").is_file()
    back = load_converted(path)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert load_config(path)["section"] == "discriminator"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


# ---------------------------------------------------------------- download (never the network)


def test_download_offline_and_not_cached_is_a_clear_error(clean_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = clean_env / "w"
    with pytest.raises(WeightsError) as err:
        download("someone/impersonate-weights", "v1.0", target)
    assert "not cached" in str(err.value) and "someone/impersonate-weights" in str(err.value)
    assert not [p for p in target.rglob("*") if p.is_file()], "a failed download left files behind"


def test_download_refuses_moving_revisions(clean_env):
    for rev in ("main", "", "0123abc"):
        with pytest.raises(UsageError, match="commit hash or a release tag"):
            download("someone/impersonate-weights", rev, clean_env / "w")


def test_download_from_cache_checks_sha256_and_records(clean_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = {"smpl_faces.npy": b"faces-bytes", "mapper.txt": b"mapper-bytes"}
    manifest = {"files": {k: {"sha256": __import__("hashlib").sha256(v).hexdigest()} for k, v in files.items()}}
    files["manifest.json"] = json.dumps(manifest).encode()
    _fake_hf_cache(clean_env / "hf_home", "someone/w", files)
    target = clean_env / "w"
    report = download("someone/w", "v1.0", target, names=["smpl_faces", "uv_mapper"])
    assert report.commit == COMMIT and set(report.downloaded) == {"smpl_faces.npy", "mapper.txt"}
    assert (target / "mapper.txt").read_bytes() == b"mapper-bytes" and weights.verify(target).ok
    recorded = weights.read_manifest(target)
    assert recorded["files"]["mapper.txt"]["source"] == f"hf://someone/w@{COMMIT}/mapper.txt"
    (target / "mapper.txt").unlink()  # now only the HF cache has it, and the recorded download finds it
    assert weights.resolve("uv_mapper", target).read_bytes() == b"mapper-bytes"
    snap = next((clean_env / "hf_home").rglob(f"snapshots/{COMMIT}"))
    (snap / "smpl_faces.npy").write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="sha256"):
        download("someone/w", COMMIT, clean_env / "w2", names=["smpl_faces"])
    save_safetensors({"x": torch.zeros(2)}, snap / "generator_fashion_place", {"section": "generator"})
    with pytest.raises(WeightsError, match="official 'generator' layout"):
        download("someone/w", COMMIT, clean_env / "w2", names=["generator_fashion_place"])
    assert not (clean_env / "w2" / "smpl_faces.npy").exists()


# ---------------------------------------------------------------- CLI


def test_cli_list_on_empty_folder_says_what_is_missing_and_how(clean_env):
    empty = clean_env / "empty"
    empty.mkdir()
    result = CliRunner().invoke(weights_app, ["list", "--weights-dir", str(empty), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(registry.NAMES) and all(r["state"] == "missing" for r in rows.values())
    assert "impersonate weights import pretrains.zip" in rows["hmr"]["how_to_get"]
    assert "vgg19-dcbb9e9d.pth" in rows["vgg19"]["how_to_get"]
    table = CliRunner().invoke(weights_app, ["list", "--weights-dir", str(empty)], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert "Missing for inference: hmr" in table.stdout and "weights import" in table.stdout
    assert registry.DEFAULT_GENERATOR in table.stdout


def test_doctor_rows(clean_env):
    rows = {r["item"]: r for r in weights.status_rows(clean_env / "empty")}
    assert rows["hmr"]["status"] == "missing" and rows["vgg19"]["status"] == "warn"
    assert all(r["hint"] for r in rows.values())
