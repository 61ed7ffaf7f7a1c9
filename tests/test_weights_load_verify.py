"""A job uses a weights folder only if `weights verify` would pass it; matches are remembered by stat.

Every corruption `weights verify` reports (a truncated file, a flipped byte, two files swapped between
names, an edited JSON asset) stops a job's loading with a WeightsError (exit 4) naming the file,
instead of running with it. The folders here are the mannequin's assets (the official formats) with a
manifest written the way `weights import` writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from impersonator_cli.errors import WeightsError
from impersonator_cli.pipeline.stages import load_stages
from impersonator_cli.weights import store, verify_cache

OLD = time.time_ns() - 3600 * 10**9  # an hour ago: older than the racy window of verify_cache


@pytest.fixture(scope="module")
def mannequin_assets(tmp_path_factory) -> Path:
    from impersonator_cli.demo.mannequin_assets import write_mannequin_assets

    folder = tmp_path_factory.mktemp("mannequin-assets")
    write_mannequin_assets(folder)
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """No weights folder but the one a test names; the per-user cache under tmp_path."""
    monkeypatch.delenv(store.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.delenv(store.ENV_WEIGHTS_REPO, raising=False)
    monkeypatch.setenv("IMPERSONATE_CACHE_DIR", str(tmp_path / "user-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _age(folder: Path, when_ns: int = OLD) -> None:
    for p in folder.iterdir():
        os.utime(p, ns=(when_ns, when_ns))


def _record(folder: Path) -> None:
    """manifest.json for every file of `folder`, as import writes it."""
    entries = {p.name: store.manifest_entry(p, p.name, "test") for p in sorted(folder.iterdir())
               if p.is_file() and not p.name.startswith(".") and p.name != store.MANIFEST_NAME}
    store.write_manifest(folder, {"files": entries})


@pytest.fixture
def job_folder(env, mannequin_assets) -> Path:
    folder = env / "weights-under-test"
    shutil.copytree(mannequin_assets, folder)
    _record(folder)
    _age(folder)
    return folder


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(folder: Path) -> list[str]:
    path = folder / "mapper.txt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["mapper.txt"]


def _flip(folder: Path) -> list[str]:
    _flip_byte(folder / "smpl_faces.npy", -5)  # a face index in the data: still a valid triangle list
    return ["smpl_faces.npy"]


def _swap(folder: Path) -> list[str]:
    a, b, tmp = folder / "head.json", folder / "front_facial.json", folder / "swap.tmp"
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)
    return ["head.json", "front_facial.json"]


def _edit_json(folder: Path) -> list[str]:
    path = folder / "smpl_part_info.json"
    info = json.loads(path.read_text())
    first = next(iter(info))
    info[first]["face"] = info[first]["face"][:-1]  # one face fewer in a part: valid JSON, wrong data
    path.write_text(json.dumps(info))
    return ["smpl_part_info.json"]


CORRUPTIONS = {"truncated": _truncate, "byte-flipped": _flip, "swapped": _swap, "edited-json": _edit_json}


# ---------------------------------------------------------------- verify and a job agree


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_weights_verify_exits_4_naming_the_file(job_folder, cli, case):
    bad = CORRUPTIONS[case](job_folder)
    res = cli("weights", "verify", "--weights-dir", job_folder, "--json")
    assert res.returncode == 4
    status = {f["file"]: f["status"] for f in json.loads(res.stdout)["files"]}
    assert sorted(f for f, s in status.items() if s != "ok") == sorted(bad)
    assert all(name in res.stderr for name in bad)


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_loading_the_stages_refuses_the_folder_naming_the_file(job_folder, case):
    bad = CORRUPTIONS[case](job_folder)
    with pytest.raises(WeightsError) as err:
        load_stages(job_folder, device="cpu", generator="none", inpaint=False)
    text = err.value.paragraph()
    assert err.value.exit_code == 4
    assert all(str(job_folder / name) in text for name in bad), text
    assert "impersonate weights verify" in text and "import" in text


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_imitate_exits_4_naming_the_file(job_folder, env, cli, case):
    bad = CORRUPTIONS[case](job_folder)
    # Placeholder inputs: the weights are loaded (and refused) before the inputs are read.
    (env / "me.png").write_bytes(b"")
    (env / "dance.motion.npz").write_bytes(b"")
    res = cli("imitate", "-s", env / "me.png", "-d", env / "dance.motion.npz", "-o", env / "out.mp4",
              "--weights-dir", job_folder, "--device", "cpu", "--generator", "none", "-q")
    assert res.returncode == 4, res.stderr
    flat = " ".join(res.stderr.split())
    assert all(name in flat for name in bad) and "weights verify" in flat, res.stderr
    assert not (env / "out.mp4").exists()


def test_an_intact_folder_loads_and_its_files_are_hashed_once(job_folder, monkeypatch):
    hashed = _count_hashes(monkeypatch)
    stages = load_stages(job_folder, device="cpu", generator="none", inpaint=False)
    assert stages.body.faces.shape[1] == 3
    assert sorted(hashed) == sorted(p.name for p in job_folder.iterdir() if not p.name.startswith(".")
                                    and p.name != store.MANIFEST_NAME)
    hashed.clear()
    load_stages(job_folder, device="cpu", generator="none", inpaint=False)
    assert hashed == []  # the next job trusts the remembered matches: same stat, same manifest sha256


def test_a_folder_without_manifest_is_used_unchecked(env, mannequin_assets):
    folder = env / "plain"
    shutil.copytree(mannequin_assets, folder)
    _flip(folder)
    store.check_folder(folder)  # nothing recorded: nothing to compare against
    assert store.find("smpl_faces", folder) == folder / "smpl_faces.npy"


# ---------------------------------------------------------------- the record of verified files


def _count_hashes(monkeypatch) -> list[str]:
    """Names of the files store.sha256_file hashes from now on (it still hashes them)."""
    calls: list[str] = []
    real = store.sha256_file

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store, "sha256_file", counting)
    return calls


@pytest.fixture
def small_folder(env) -> Path:
    folder = env / "small"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(os.urandom(4096))
    (folder / "a.json").write_text('{"section": "x"}\n')
    (folder / "head.json").write_text('{"face": [1, 2, 3]}')
    _record(folder)
    _age(folder)
    return folder


def test_matches_are_remembered_by_stat_and_not_hashed_again(small_folder, monkeypatch, cli):
    hashed = _count_hashes(monkeypatch)
    store.check_folder(small_folder)
    assert sorted(hashed) == ["a.json", "a.safetensors", "head.json"]
    record = json.loads((small_folder / verify_cache.CACHE_NAME).read_text())
    manifest = store.read_manifest(small_folder)["files"]
    for name, rec in record["files"].items():
        st = (small_folder / name).stat()
        assert rec == {"sha256": manifest[name]["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                       "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
    hashed.clear()
    for _ in range(3):
        store.check_folder(small_folder)
    assert hashed == []
    res = cli("weights", "verify", "--weights-dir", small_folder, "--json")
    assert res.returncode == 0 and sorted(hashed) == ["a.json", "a.safetensors", "head.json"]  # verify re-hashes
    assert json.loads(res.stdout)["unrecorded"] == []  # the record is not a stray weight file


def test_a_changed_file_of_the_same_size_is_hashed_again_and_refused(small_folder, monkeypatch):
    store.check_folder(small_folder)
    hashed = _count_hashes(monkeypatch)
    path = small_folder / "a.safetensors"
    _flip_byte(path, 100)
    os.utime(path, ns=(OLD + 10**9, OLD + 10**9))  # same size, another mtime
    with pytest.raises(WeightsError, match="a.safetensors"):
        store.check_folder(small_folder)
    assert hashed == ["a.safetensors"]
    assert "a.safetensors" not in verify_cache.load(small_folder)


def test_a_changed_file_with_its_old_mtime_put_back_is_still_hashed(small_folder, monkeypatch):
    store.check_folder(small_folder)
    hashed = _count_hashes(monkeypatch)
    path = small_folder / "head.json"
    path.write_text('{"face": [1, 2, 4]}')  # same size
    os.utime(path, ns=(OLD, OLD))  # the remembered mtime; the ctime still tells
    with pytest.raises(WeightsError, match="head.json"):
        store.check_folder(small_folder)
    assert hashed == ["head.json"]


def test_a_file_written_just_now_is_not_remembered(small_folder, monkeypatch):
    store.check_folder(small_folder)
    (small_folder / "head.json").write_text('{"face": [7, 8, 9]}')
    _record(small_folder)  # recorded at once, as an import does: too fresh to trust its stat later
    hashed = _count_hashes(monkeypatch)
    store.check_folder(small_folder)
    store.check_folder(small_folder)
    assert hashed == ["head.json", "head.json"]


def test_a_forged_record_does_not_fool_weights_verify(small_folder, cli):
    store.check_folder(small_folder)
    path = small_folder / "head.json"
    before = path.stat()
    path.write_text('{"face": [3, 2, 1]}')
    os.utime(path, ns=(before.st_mtime_ns, before.st_mtime_ns))
    record = json.loads((small_folder / verify_cache.CACHE_NAME).read_text())
    record["files"]["head.json"]["ctime_ns"] = path.stat().st_ctime_ns  # pretend it was checked as it is now
    (small_folder / verify_cache.CACHE_NAME).write_text(json.dumps(record))
    assert cli("weights", "verify", "--weights-dir", small_folder).returncode == 4


def test_a_read_only_folder_is_checked_and_remembered_per_user(small_folder, env, monkeypatch):
    real_write = verify_cache._write_atomic

    def no_write_inside(path, text):  # what a read-only folder does (chmod alone does not stop root)
        if path.parent == small_folder:
            raise PermissionError(13, "Read-only file system", str(path))
        real_write(path, text)

    monkeypatch.setattr(verify_cache, "_write_atomic", no_write_inside)
    small_folder.chmod(0o555)
    try:
        hashed = _count_hashes(monkeypatch)
        store.check_folder(small_folder)
        assert not (small_folder / verify_cache.CACHE_NAME).exists()
        assert len(list((env / "user-cache" / "weights-verified").glob("*.json"))) == 1
        hashed.clear()
        store.check_folder(small_folder)
        assert hashed == []
        # Nowhere to write at all: still checked, every time.
        (env / "not-a-folder").write_text("")
        monkeypatch.setenv("IMPERSONATE_CACHE_DIR", str(env / "not-a-folder"))
        store.check_folder(small_folder)
        store.check_folder(small_folder)
        assert len(hashed) == 6
    finally:
        small_folder.chmod(0o755)


def test_weights_list_reports_a_damaged_file_instead_of_refusing(env, cli):
    folder = env / "listed"
    folder.mkdir()
    (folder / "head.json").write_text('{"face": [1, 2, 3]}')
    _record(folder)
    (folder / "head.json").write_text('{"face": [1, 2, 4]}')
    res = cli("weights", "list", "--weights-dir", folder, "--check", "--json")
    assert res.returncode == 0
    assert {r["name"]: r["state"] for r in json.loads(res.stdout)}["head"] == "modified"
