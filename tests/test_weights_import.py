"""Importing the official release: release-like zips in, checked safetensors out; refusals change nothing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from support.official_ckpt import (
    build_zip, checkpoints_members, pretrains_members, scratch_dir, write_assets, write_checkpoint,
)
from typer.testing import CliRunner

from impersonator_cli.weights import store as weights
from impersonator_cli.weights import verify_cache
from impersonator_cli.weights.checkpoints import load_config, load_converted
from impersonator_cli.errors import InputError, WeightsError
from impersonator_cli.cli.weights import weights_app
from impersonator_cli.weights.importer import import_release, scan_source


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    with scratch_dir(tmp_path_factory.mktemp("scratch")) as folder:
        yield folder


@pytest.fixture(scope="module")
def release(scratch):
    """Official-format files (full-size networks) and the references a correct import must reproduce."""
    root = scratch / "release"
    files = {"assets": write_assets(root / "assets")}
    refs = {
        "hmr": write_checkpoint(root / "hmr_tf2pt.pth", "hmr", legacy=True, drop_num_batches=True, seed=1),
        "generator_fashion_place": write_checkpoint(root / "gen.pth", "generator", module_prefix=True,
                                                    legacy=True, seed=3),
        "inpaintor_deepfillv2": write_checkpoint(root / "deepfill.pth", "bg_inpaintor_deepfillv2", seed=4),
    }
    pre = build_zip(root / "pretrains.zip", pretrains_members(files["assets"], root / "hmr_tf2pt.pth",
                                                               top="assets/pretrains"))
    ckpt = build_zip(root / "checkpoints.zip", checkpoints_members(
        {"lwb_imper_fashion_place": root / "gen.pth"}, root / "deepfill.pth", top="outputs/checkpoints"))
    return {"root": root, "pretrains": pre, "checkpoints": ckpt, "refs": refs, "assets": files["assets"]}


@pytest.fixture(scope="module")
def imported(release, scratch):
    folder = scratch / "weights"
    report = import_release([release["checkpoints"], release["pretrains"]], folder)  # any order
    return folder, report


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry (hidden ones included) with inode, size and mtime: a replaced or rewritten file shows."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_import_converts_every_network_exactly(imported, release):
    folder, report = imported
    for name, ref in release["refs"].items():
        sd = load_converted(weights.resolve(name, folder))
        assert list(sd) == list(ref), name  # all official keys, in the official order
        assert all(torch.equal(sd[k], ref[k]) for k in ref), name
    hmr = load_converted(weights.resolve("hmr", folder))
    counters = [k for k in hmr if k.endswith("num_batches_tracked")]
    assert len(counters) == 49 and all(int(hmr[k]) == 0 for k in counters)
    cfg = load_config(weights.resolve("generator_fashion_place", folder))
    assert cfg["section"] == "generator" and cfg["conv_dim"] == 64 and cfg["repeat_num"] == 6
    assert cfg["source_sha256"] == weights.sha256_file(release["root"] / "gen.pth")


def test_import_copies_assets_and_reports(imported, release):
    folder, report = imported
    for name, path in release["assets"].items():
        assert (folder / name).read_bytes() == path.read_bytes(), name
    assert {i.name for i in report.imported} == {
        "hmr", "smpl_model", "smpl_faces", "uv_mapper", "part_info", "front_facial", "head", "front_face_1",
        "generator_fashion_place", "inpaintor_deepfillv2"}
    assert set(report.optional_missing) == {"sphereface", "generator_imper", "generator_imper_place", "vgg19"}
    assert report.required_missing == ()
    hmr_item = next(i for i in report.imported if i.name == "hmr")
    assert hmr_item.source == "pretrains.zip:assets/pretrains/hmr_tf2pt.pth"
    assert weights.verify(folder).ok and weights.verify(folder).unrecorded == ()
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".") and p.name != verify_cache.CACHE_NAME]
    assert not leftovers, "staging left behind"  # the record of verified files (jobs' check) may be there


def test_cli_list_after_import(imported):
    folder, _ = imported
    result = CliRunner().invoke(weights_app, ["list", "--weights-dir", str(folder), "--json", "--check"])
    assert result.exit_code == 0, result.output
    state = {r["name"]: r["state"] for r in json.loads(result.stdout)}
    assert state["generator_fashion_place"] == "verified" and state["hmr"] == "verified"
    assert state["vgg19"] == "missing"


def _assert_refused(sources, folder: Path, *fragments: str, error=WeightsError) -> None:
    before = _snapshot(folder)
    existed = folder.exists()
    with pytest.raises(error) as err:
        import_release(sources, folder)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert folder.exists() == existed and _snapshot(folder) == before


@pytest.fixture()
def small_release(release, tmp_path):
    """Members of a pretrains.zip whose hmr is a placeholder: for refusals that come before any network
    is read (assets are checked first, and member names before anything)."""
    placeholder = tmp_path / "placeholder.pth"
    placeholder.write_bytes(b"never read: the import must refuse before it loads networks")
    return pretrains_members(release["assets"], placeholder)


def test_member_escaping_the_folder_is_refused(imported, release, tmp_path, small_release):
    folder, _ = imported
    members = {**small_release, "pretrains/../../evil.txt": b"x"}
    evil = build_zip(tmp_path / "pretrains.zip", members)
    _assert_refused([evil], folder, "'pretrains/../../evil.txt'", "escape")
    absolute = build_zip(tmp_path / "abs.zip", {"/etc/cron.d/evil": b"x"})
    _assert_refused([absolute], tmp_path / "fresh", "/etc/cron.d/evil")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_missing_member_is_refused(imported, release, tmp_path, small_release):
    folder, _ = imported
    members = {k: v for k, v in small_release.items() if not k.endswith("mapper.txt")}
    _assert_refused([build_zip(tmp_path / "pretrains.zip", members)], folder, "pretrains.zip is incomplete",
                    "mapper.txt")


def test_wrong_shape_is_refused_and_folder_unchanged(imported, release, tmp_path):
    folder, _ = imported
    bad = tmp_path / "extracted" / "checkpoints"
    write_checkpoint(bad / "deepfillv2" / "net_epoch_50_id_G.pth", "bg_inpaintor_deepfillv2",
                     wrong_shape="refine_upsample_net.6.conv2d.weight")
    (bad / "lwb_imper_fashion_place").mkdir()
    (bad / "lwb_imper_fashion_place" / "net_epoch_30_id_G.pth").symlink_to(release["root"] / "gen.pth")
    _assert_refused([tmp_path / "extracted"], folder, "net_epoch_50_id_G.pth", "refine_upsample_net.6.conv2d.weight",
                    "expected [3, 16, 3, 3], found [4, 16, 3, 3]")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_checkpoint_in_zip_is_refused_without_running_it(imported, tmp_path, small_release):
    folder, _ = imported
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "hmr_tf2pt.pth"
    evil.write_bytes(pickle.dumps({"resnet.conv1.weight": _Payload(marker)}, protocol=2))
    members = {**small_release, "pretrains/hmr_tf2pt.pth": evil}
    _assert_refused([build_zip(tmp_path / "pretrains.zip", members)], folder, "hmr_tf2pt.pth", "Refused")
    assert not marker.exists()


def test_bad_asset_is_refused(imported, tmp_path, small_release):
    folder, _ = imported
    bad_faces = tmp_path / "smpl_faces.npy"
    np.save(bad_faces, np.zeros((13775, 3), dtype=np.int64))
    members = {**small_release, "pretrains/smpl_faces.npy": bad_faces}
    _assert_refused([build_zip(tmp_path / "pretrains.zip", members)], folder, "smpl_faces.npy", "(13776, 3)")
    mapper = tmp_path / "mapper.txt"
    mapper.write_text(Path(small_release["pretrains/mapper.txt"]).read_text() + "usemtl skin\n")
    members = {**small_release, "pretrains/mapper.txt": mapper}
    _assert_refused([build_zip(tmp_path / "pretrains2.zip", members)], folder, "mapper.txt", "usemtl")


def test_corrupt_zip_member_is_refused(imported, tmp_path, small_release):
    folder, _ = imported
    archive = build_zip(tmp_path / "pretrains.zip", small_release)
    data = bytearray(archive.read_bytes())
    at = data.index(b"\nvt ")  # inside the stored mapper.txt: its CRC-32 no longer matches
    data[at + 1] = ord("w")
    archive.write_bytes(bytes(data))
    _assert_refused([archive], folder, "pretrains.zip:pretrains/mapper.txt", "cannot be extracted")


def test_fake_vgg19_is_refused_by_its_hash(tmp_path):
    fake = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, fake)
    _assert_refused([fake], tmp_path / "w", "dcbb9e9d", "sha256")


def test_unrelated_or_missing_sources(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _assert_refused([tmp_path / "notes.txt"], tmp_path / "w", "None of the given files")
    _assert_refused([tmp_path / "nope.zip"], tmp_path / "w", "nope.zip", error=InputError)


def test_cli_import_of_a_loose_optional_file(tmp_path, release):
    loose = tmp_path / "src" / "front_face_1.json"
    loose.parent.mkdir()
    loose.write_bytes(release["assets"]["front_face_1.json"].read_bytes())
    folder = tmp_path / "w"
    result = CliRunner().invoke(weights_app, ["import", str(loose), "--weights-dir", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [i["name"] for i in report["imported"]] == ["front_face_1"]
    assert "hmr" in report["required_missing"] and "sphereface" in report["optional_missing"]
    assert (folder / "front_face_1.json").read_bytes() == loose.read_bytes() and weights.verify(folder).ok
    loose.write_text(json.dumps({"face": [5, 6, 7]}))  # importing again replaces the file and its record
    import_release([loose], folder)
    assert json.loads((folder / "front_face_1.json").read_text()) == {"face": [5, 6, 7]}
    assert weights.verify(folder).ok and list(weights.read_manifest(folder)["files"]) == ["front_face_1.json"]


def test_folder_source_skips_the_weights_folder_inside_it(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "head.json").write_text("{}")
    (tmp_path / "pretrains").mkdir()
    (tmp_path / "pretrains" / "head.json").write_text("{}")
    names = [m.name for m in scan_source(tmp_path, skip=(tmp_path / "weights").absolute())]
    assert names == ["pretrains/head.json"]
