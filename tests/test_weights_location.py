"""Where the weights live: one per-user folder, found the same from every working folder.

Lookup: --weights-dir > $IMPERSONATE_WEIGHTS_DIR > ./weights holding a manifest.json > the per-user
folder ($XDG_DATA_HOME/impersonate/weights, else ~/.local/share/impersonate/weights) > the Hugging
Face cache. `weights import` writes to --weights-dir, else $IMPERSONATE_WEIGHTS_DIR, else the per-user
folder. HOME and XDG_DATA_HOME point into tmp folders: the real home is never read or written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from impersonator_cli.defaults import user_weights_dir
from impersonator_cli.weights import store

MESH_ASSETS = ("smpl_faces.npy", "mapper.txt", "smpl_part_info.json", "front_facial.json", "head.json",
               "smpl_model.pkl")


@pytest.fixture()
def home(monkeypatch, tmp_path) -> Path:
    """A fresh HOME, no XDG_DATA_HOME, no weights folder or repo from the environment, an empty HF cache."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv(store.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.delenv(store.ENV_WEIGHTS_REPO, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return home


def test_the_per_user_folder_follows_xdg(home, monkeypatch, tmp_path):
    assert user_weights_dir() == home / ".local" / "share" / "impersonate" / "weights"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_weights_dir() == tmp_path / "data" / "impersonate" / "weights"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # invalid by the XDG spec: ignored
    assert user_weights_dir() == home / ".local" / "share" / "impersonate" / "weights"


def test_lookup_order_and_where_imports_go(home, monkeypatch, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    user = user_weights_dir()
    assert store.search_dirs() == [user] and store.install_dir() == user and store.target_dir() == user
    (work / "weights").mkdir()  # e.g. a checkout's weights/ holding only its README: not a weights folder
    assert store.search_dirs() == [user]
    store.write_manifest(work / "weights", {"files": {}})  # an import made by an earlier version
    assert store.search_dirs() == [work / "weights", user]
    assert store.install_dir() == user  # imports still go to the per-user folder
    env = tmp_path / "env"
    monkeypatch.setenv(store.ENV_WEIGHTS_DIR, str(env))
    assert store.search_dirs() == [env, work / "weights", user] and store.install_dir() == env
    explicit = tmp_path / "explicit"
    assert store.search_dirs(explicit)[0] == explicit and store.install_dir(explicit) == explicit


def test_a_file_in_the_per_user_folder_is_found_from_any_folder(home, monkeypatch, tmp_path):
    user = user_weights_dir()
    user.mkdir(parents=True)
    (user / "mapper.txt").write_text("v 0 0 0\n")
    for cwd in (tmp_path, home, user):
        monkeypatch.chdir(cwd)
        assert store.resolve("uv_mapper") == user / "mapper.txt"


def test_an_import_in_one_folder_serves_a_job_in_another(home, demo_world, monkeypatch, tmp_path, cli):
    f = demo_world.files
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.chdir(downloads)
    res = cli("weights", "import", *(f.weights_dir / name for name in MESH_ASSETS), "--json")
    assert res.returncode == 0, res.stderr
    user = home / ".local" / "share" / "impersonate" / "weights"
    assert Path(json.loads(res.stdout)["weights_dir"]) == user
    assert sorted(p.name for p in downloads.iterdir()) == []  # nothing written where the import ran

    project = tmp_path / "projects" / "clip"
    project.mkdir(parents=True)
    monkeypatch.chdir(project)
    listed = {row["name"]: row for row in json.loads(cli("weights", "list", "--json").stdout)}
    assert listed["smpl_faces"]["path"] == str(user / "smpl_faces.npy")
    assert listed["hmr"]["state"] == "missing"
    out = project / "out.mp4"
    res = cli("imitate", "-s", f.source, "--source-smpl", f.source_smpl, "-d", f.motion, "-o", out,
              "--generator", "none", "--device", "cpu", "--max-frames", 2, "-q")
    assert res.returncode == 0, res.stderr
    assert out.is_file()
