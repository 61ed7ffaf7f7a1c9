"""`impersonate batch` on the demo world, warp-only: outputs equal single runs, motions are recovered
once per driver, a killed batch resumes without doing a job twice or losing one, a failing job does
not stop the others, a bad manifest stops before anything runs, and the Ray path writes the same
bytes as the local one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from impersonator_cli.io.probe import probe
from impersonator_cli.io.video import read_frames


def frames_of(path) -> np.ndarray:
    with read_frames(path) as src:
        return np.stack(list(src))


@pytest.fixture
def bench(demo_world, tmp_path, monkeypatch):
    """A folder with two drivers of different content, and the job fields every line shares."""
    monkeypatch.setenv("IMPERSONATE_CACHE_DIR", str(tmp_path / "cache"))
    f = demo_world.files
    shutil.copy(f.driver, tmp_path / "a.mp4")
    with open(tmp_path / "b.mp4", "wb") as out:  # other bytes (so another content hash), same frames
        out.write(f.driver.read_bytes())
        out.write(b"\0" * 16)
    (tmp_path / "out").mkdir()
    common = {"generator": "none", "weights_dir": str(f.weights_dir), "crop": "full", "device": "cpu"}
    return tmp_path, f, common


def imitate_line(f, common, source, smpl, driver, output, **extra) -> dict:
    return {"job": "imitate", "sources": [str(source)], "source_smpl": [str(smpl)], "driver": driver,
            "output": output, **common, **extra}


def write_manifest(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def grid(folder: Path, f, common) -> list[dict]:
    """2 sources x 2 drivers of imitate, plus a novelview and a swap: 6 jobs."""
    jobs = [imitate_line(f, common, src, smpl, drv, f"out/{src.stem}-{drv[0]}.mp4", max_frames=4)
            for src, smpl in ((f.source, f.source_smpl), (f.reference, f.reference_smpl)) for drv in ("a.mp4", "b.mp4")]
    jobs.append({"job": "novelview", "sources": [str(f.source)], "source_smpl": str(f.source_smpl),
                 "output": "out/orbit.mp4", "frames": 3, **common})
    jobs.append({"job": "swap", "sources": [str(f.source)], "reference": str(f.reference), "source_smpl": str(f.source_smpl),
                 "reference_smpl": str(f.reference_smpl), "part": "upper", "output": "out/swap.png", **common})
    return jobs


def test_a_manifest_runs_every_job_once_recovering_each_motion_once(bench, cli):
    folder, f, common = bench
    manifest = write_manifest(folder / "jobs.jsonl", grid(folder, f, common))
    res = cli("batch", manifest, "--json", "-q")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    lines = results(folder / "jobs.results.jsonl")
    assert sorted(line["index"] for line in lines) == list(range(1, 7)) and {x["status"] for x in lines} == {"ok"}
    # Each driver's motion recovered once, each photo prepared once, the networks loaded once.
    motions = [x["reuse"].get("motion") for x in lines if x["job"] == "imitate"]
    assert sorted(motions) == ["extracted", "extracted", "memory", "memory"]
    assert summary["motions_extracted"] == 2 and summary["stages_loaded"] == 1
    assert len(list((folder / "cache" / "motion").glob("*.motion.npz"))) == 2
    assert summary["sources_prepared"] == 2
    # Every output is what the same job gives on its own.
    single = folder / "single.mp4"
    assert cli("imitate", "-s", f.reference, "--source-smpl", f.reference_smpl, "-d", folder / "b.mp4", "-o", single,
               "--generator", "none", "--weights-dir", f.weights_dir, "--crop", "full", "--device", "cpu",
               "--max-frames", 4, "-q").returncode == 0
    assert np.array_equal(frames_of(folder / "out" / "reference-b.mp4"), frames_of(single))
    assert single.read_bytes() == (folder / "out" / "reference-b.mp4").read_bytes()
    assert probe(folder / "out" / "orbit.mp4").frame_count == 3 and (folder / "out" / "swap.png").is_file()
    # A second run finds every output complete and recovers nothing: the motion cache is on disk.
    again = cli("batch", manifest, "--json", "-q", "--results", folder / "again.jsonl")
    assert again.returncode == 0 and {x["status"] for x in results(folder / "again.jsonl")} == {"skipped"}
    redo = cli("batch", manifest, "--json", "-q", "--redo", "--results", folder / "redo.jsonl")
    assert redo.returncode == 0 and json.loads(redo.stdout)["motions_extracted"] == 0


def test_a_failing_job_does_not_stop_the_others(bench, cli):
    folder, f, common = bench
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    jobs = [imitate_line(f, common, f.source, f.source_smpl, "a.mp4", "out/1.mp4", max_frames=2),
            {**imitate_line(f, common, folder / "broken.png", f.source_smpl, "a.mp4", "out/2.mp4", max_frames=2)},
            imitate_line(f, common, f.source, f.source_smpl, "b.mp4", "out/3.mp4", max_frames=2)]
    res = cli("batch", write_manifest(folder / "jobs.jsonl", jobs), "-q")
    assert res.returncode == 3, res.stderr  # the failed job's exit code (bad input)
    lines = {x["index"]: x for x in results(folder / "jobs.results.jsonl")}
    assert lines[1]["status"] == lines[3]["status"] == "ok"
    assert lines[2]["status"] == "failed" and lines[2]["error"]["exit_code"] == 3
    assert "broken.png" in lines[2]["error"]["path"] and lines[2]["error"]["kind"].endswith("Error")
    assert (folder / "out" / "1.mp4").is_file() and (folder / "out" / "3.mp4").is_file()
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["1.mp4", "3.mp4"]  # no partial file


@pytest.mark.parametrize("edit,named", [
    (lambda j: {**j, "max_frame": 3}, "'max_frame'"),
    (lambda j: {**j, "max_frames": 0}, "--max-frames"),
    (lambda j: {**j, "driver": "missing.mp4"}, "'driver'"),
    (lambda j: {**j, "layout": "grid"}, "--layout"),
    (lambda j: {**j, "job": "dance"}, "'job'"),
])
def test_a_bad_line_stops_the_batch_before_anything_runs(bench, cli, edit, named):
    folder, f, common = bench
    good = imitate_line(f, common, f.source, f.source_smpl, "a.mp4", "out/1.mp4")
    manifest = write_manifest(folder / "jobs.jsonl", [good, edit(imitate_line(f, common, f.source, f.source_smpl,
                                                                               "b.mp4", "out/2.mp4"))])
    res = cli("batch", manifest)
    assert res.returncode == 2, res.stderr
    assert "jobs.jsonl line 2" in res.stderr and named in res.stderr
    assert not (folder / "jobs.results.jsonl").exists() and not list((folder / "out").iterdir())


def test_csv_manifests_name_the_same_keys(bench, cli):
    folder, f, common = bench
    header = "job,sources,source_smpl,driver,output,generator,weights_dir,crop,device,max_frames\n"
    row = f"imitate,{f.source},{f.source_smpl},a.mp4,out/csv.mp4,none,{f.weights_dir},full,cpu,2\n"
    (folder / "jobs.csv").write_text(header + row)
    res = cli("batch", folder / "jobs.csv", "--json", "-q")
    assert res.returncode == 0, res.stderr
    assert probe(folder / "out" / "csv.mp4").frame_count == 2


@pytest.mark.slow  # a subprocess batch, killed, then resumed by two worker processes
def test_a_killed_batch_resumes_without_repeating_or_losing_a_job(bench, tmp_path):
    folder, f, common = bench
    jobs = [imitate_line(f, common, src, smpl, drv, f"out/{i}.mp4", max_frames=4)
            for i, (src, smpl, drv) in enumerate([(f.source, f.source_smpl, "a.mp4"), (f.reference, f.reference_smpl, "a.mp4"),
                                                   (f.source, f.source_smpl, "b.mp4"), (f.reference, f.reference_smpl, "b.mp4")])]
    manifest = write_manifest(folder / "jobs.jsonl", jobs)
    first = folder / "first.jsonl"
    env = {**os.environ, "IMPERSONATE_CACHE_DIR": str(folder / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "impersonator_cli", "batch", str(manifest), "--results", str(first),
                             "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if first.exists() and first.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a crash: no clean-up at all
    proc.wait()
    done_first = [x["index"] for x in results(first) if x["status"] == "ok"]
    assert 1 <= len(done_first) < 4
    second = folder / "second.jsonl"
    # Resumed with two worker processes: the local parallel path.
    res = subprocess.run([sys.executable, "-m", "impersonator_cli", "batch", str(manifest), "--results", str(second),
                          "-q", "--workers", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = results(second)
    done_second = [x["index"] for x in lines if x["status"] == "ok"]
    assert sorted(done_first + done_second) == [1, 2, 3, 4]  # none twice, none lost
    assert sorted(x["index"] for x in lines if x["status"] == "skipped") == sorted(done_first)
    # Every output whole, and the killed run's hidden partial file gone.
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["0.mp4", "1.mp4", "2.mp4", "3.mp4"]
    assert all(probe(folder / "out" / f"{i}.mp4").frame_count == 4 for i in range(4))


@pytest.mark.slow  # starts a local Ray cluster
def test_ray_writes_the_same_bytes_as_the_local_run(bench, cli, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for name in ("RAY_CLIENT_MODE", "PYTHONBREAKPOINT", "RAY_USAGE_STATS_ENABLED"):  # importing ray and ray.init set these
        monkeypatch.setenv(name, "")  # recorded by monkeypatch, which removes them again at teardown
        monkeypatch.delenv(name)
    ray = pytest.importorskip("ray")
    folder, f, common = bench
    sigterm = signal.getsignal(signal.SIGTERM)  # and installs a SIGTERM handler
    jobs = [grid(folder, f, common)[i] for i in (0, 3, 4)]  # imitate on each driver, and a novelview
    local = write_manifest(folder / "local.jsonl", jobs)
    assert cli("batch", local, "-q").returncode == 0
    remote_jobs = [{**j, "output": j["output"].replace("out/", "ray/")} for j in jobs]
    (folder / "ray").mkdir()
    remote = write_manifest(folder / "ray.jsonl", remote_jobs)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        res = cli("batch", remote, "--ray", "auto", "--json", "-q")
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, sigterm)
    assert res.returncode == 0, res.stderr
    assert {x["status"] for x in results(folder / "ray.results.jsonl")} == {"ok"}
    for name in sorted(p.name for p in (folder / "out").iterdir()):
        assert (folder / "ray" / name).read_bytes() == (folder / "out" / name).read_bytes(), name
