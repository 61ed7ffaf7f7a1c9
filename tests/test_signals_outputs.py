"""Never silently wrong at the edges of a job (issue 13).

- SIGTERM (timeout, Slurm, docker stop) and SIGHUP stop a job like Ctrl-C: temp files removed, ffmpeg
  children ended, exit 128 + the signal, one line on stderr; an interrupted demo leaves no input half
  written.
- Two jobs writing one output at once: without --overwrite the later one never replaces the earlier
  result (it fails with exit 5 and leaves no temp file).
- A failing ffmpeg gives one paragraph; its own lines only under --debug.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from impersonator_cli.body.motion import load_motion, save_motion
from impersonator_cli.cli.interrupts import Interrupts, interrupt_handlers
from impersonator_cli.errors import EncodeError, InputError, OutputError
from impersonator_cli.io import encode, images, publish
from impersonator_cli.io.images import read_image, write_image
from impersonator_cli.io.probe import probe
from impersonator_cli.io.encode import VideoWriter

LINE = {signal.SIGINT: "Interrupted by Ctrl-C (SIGINT): the job stopped and no output was written.",
        signal.SIGTERM: "Interrupted by SIGTERM: the job stopped and no output was written.",
        signal.SIGHUP: "Interrupted by SIGHUP: the job stopped and no output was written."}


def imitate_args(world, out, driver, *extra):
    f = world.files
    return ["imitate", "-s", f.source, "--source-smpl", f.source_smpl, "-d", driver, "-o", out, "--weights-dir",
            f.weights_dir, "--crop", "full", "--device", "cpu", "--generator", "none", "-q", *extra]


def long_motion(world, path: Path, repeats: int = 60) -> Path:
    """The world's dance played `repeats` times: a job long enough to be caught while it writes."""
    m = load_motion(world.files.motion)
    tiled = {k: np.concatenate([getattr(m, k)] * repeats) for k in ("cams", "poses", "shapes", "boxes")}
    return save_motion(path, dataclasses.replace(m, **tiled, missing=(), times=None))


def children(pid: int) -> list[int]:
    """Pids of the processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_job(args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "impersonator_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)


def wait_until(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the job ended before it was interrupted: {proc.communicate()}"
        assert time.time() < deadline, "the job never got to writing"
        time.sleep(0.02)


def interrupt(proc: subprocess.Popen, signum: int) -> tuple[str, list[int]]:
    """Send `signum`; -> (stderr, the children the process had just before)."""
    kids = children(proc.pid)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    return stderr, kids


def assert_children_gone(kids: list[int]) -> None:
    deadline = time.time() + 10
    while any(alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(k) for k in kids), "an ffmpeg child outlived the job"


# ----------------------------------------------------------------------------- signals, real processes


ON_LINUX = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")


@pytest.mark.slow  # a real process: interpreter start, then the signal once the encoder is writing
@ON_LINUX
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_stops_a_job_cleanly(demo_world, tmp_path, signum):
    if signal.getsignal(signum) == signal.SIG_IGN:
        pytest.skip(f"{signum.name} is ignored here (nohup?), and the CLI rightly keeps it ignored")
    motion = long_motion(demo_world, tmp_path / "long.motion.npz")
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = start_job(imitate_args(demo_world, outdir / "out.mp4", motion), tmp_path)

    def writing() -> bool:  # the hidden partial exists and ffmpeg runs
        return any(p.name.startswith(".out.mp4.partial") for p in outdir.iterdir()) and bool(children(proc.pid))

    wait_until(proc, writing)
    stderr, kids = interrupt(proc, signum)
    assert proc.returncode == 128 + signum, stderr
    assert list(outdir.iterdir()) == []
    assert_children_gone(kids)
    assert stderr.strip().splitlines() == [LINE[signum]], stderr


@pytest.mark.slow  # a real process: the demo builds its inputs, then SIGTERM while the driver is encoded
@ON_LINUX
def test_an_interrupted_demo_leaves_no_input_half_written(tmp_path):
    folder = tmp_path / "demo"
    proc = start_job(["demo", "-o", folder, "--frames", 400, "--device", "cpu", "-q"], tmp_path)

    def encoding_driver() -> bool:
        return any(p.name.startswith(".driver.mp4.partial") for p in folder.glob(".demo-inputs*/*"))

    wait_until(proc, encoding_driver)
    stderr, kids = interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143, stderr
    assert list(folder.iterdir()) == [], "inputs were left in the demo folder"
    assert_children_gone(kids)
    assert stderr.strip().splitlines() == [LINE[signal.SIGTERM]], stderr


# ----------------------------------------------------------------------------- signals, in process


def test_sigterm_in_process_exits_143_with_one_line(cli, monkeypatch, tmp_path):
    from impersonator_cli.cli import doctor

    def killed(**_):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this

    monkeypatch.setattr(doctor, "collect_report", killed)
    res = cli("doctor", "--weights-dir", tmp_path)
    assert res.returncode == 143 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [LINE[signal.SIGTERM]]


def test_a_failure_caused_by_the_signal_is_reported_as_the_interruption(cli, monkeypatch, tmp_path):
    """ffmpeg stopped by the same SIGTERM (Slurm signals every process) surfaces as an encode error:
    the job still reports the interruption, with the signal's exit code."""
    from impersonator_cli.cli import doctor

    def encoder_died(**_):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        except KeyboardInterrupt:
            raise EncodeError("ffmpeg stopped while encoding the video", detail="killed") from None

    monkeypatch.setattr(doctor, "collect_report", encoder_died)
    res = cli("doctor", "--weights-dir", tmp_path)
    assert res.returncode == 143 and res.stderr.strip().splitlines() == [LINE[signal.SIGTERM]]


def test_ctrl_c_prints_the_line(cli, monkeypatch, tmp_path):
    from impersonator_cli.cli import doctor

    def pressed(**_):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)

    monkeypatch.setattr(doctor, "collect_report", pressed)
    res = cli("doctor", "--weights-dir", tmp_path)
    assert res.returncode == 130 and res.stderr.strip().splitlines() == [LINE[signal.SIGINT]]


def test_the_line_names_an_output_written_before_the_signal(cli, monkeypatch, tmp_path):
    from impersonator_cli.cli import doctor

    def written_then_killed(**_):
        write_image(tmp_path / "done.png", np.zeros((4, 4, 3), np.uint8))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    monkeypatch.setattr(doctor, "collect_report", written_then_killed)
    res = cli("doctor", "--weights-dir", tmp_path)
    assert res.returncode == 143 and res.stderr.strip().splitlines() == [
        f"Interrupted by SIGTERM: the job stopped after writing {tmp_path / 'done.png'}; no partial output was left."]


def test_handlers_live_only_while_main_runs_and_ignored_signals_stay_ignored(cli, monkeypatch, tmp_path):
    from impersonator_cli.cli import doctor

    seen = {}
    monkeypatch.setattr(doctor, "collect_report", lambda **_: seen.update(
        {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}) or {})
    monkeypatch.setattr(doctor, "render_report", lambda *a, **k: None)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        assert cli("doctor", "--weights-dir", tmp_path).returncode == 0
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)
    assert seen[signal.SIGHUP] == signal.SIG_IGN
    assert all(getattr(seen[s], "__self__", None).__class__ is Interrupts for s in (signal.SIGINT, signal.SIGTERM))
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_repeated_signal_lets_the_cleanup_finish():
    state = Interrupts()
    with interrupt_handlers(state):
        with pytest.raises(KeyboardInterrupt):
            state.handle(signal.SIGTERM, None)
        state.handle(signal.SIGTERM, None)  # the second, during the cleanup: recorded, not raised
    assert state.received == [signal.SIGTERM, signal.SIGTERM]


# ----------------------------------------------------------------------------- two writers, one output


def frames(n: int, value: int) -> np.ndarray:
    return np.full((n, 32, 48, 3), value, np.uint8)


def test_racing_video_writers_never_replace_the_first_result(tmp_path):
    out = tmp_path / "out.mp4"
    first, second = VideoWriter(out, 25, overwrite=False), VideoWriter(out, 25, overwrite=False)
    first.write(frames(5, 40))
    second.write(frames(3, 200))
    first.close()
    with pytest.raises(OutputError) as err:
        second.close()
    assert err.value.exit_code == 5 and "appeared while this job ran" in str(err.value)
    assert probe(out).frame_count == 5
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_racing_video_writers_with_overwrite_keep_the_last(tmp_path):
    out = tmp_path / "out.mp4"
    first, second = VideoWriter(out, 25, overwrite=True), VideoWriter(out, 25, overwrite=True)
    first.write(frames(5, 40))
    second.write(frames(3, 200))
    first.close()
    second.close()
    assert probe(out).frame_count == 3 and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_images_and_motion_files_never_replace_a_file_that_appeared(tmp_path, demo_world):
    img = tmp_path / "a.png"
    img.write_bytes(b"the other job's image")
    with pytest.raises(OutputError, match="appeared"):
        write_image(img, np.zeros((4, 4, 3), np.uint8), overwrite=False)
    assert img.read_bytes() == b"the other job's image"
    write_image(img, np.zeros((4, 4, 3), np.uint8), overwrite=True)
    assert read_image(img).shape == (4, 4, 3)
    tmp = images.reserve_partial_path(tmp_path / "m.npz")
    (tmp_path / "m.npz").write_bytes(b"the other job's motion")
    with pytest.raises(OutputError, match="appeared"):
        publish.publish(tmp, tmp_path / "m.npz", overwrite=False)
    assert (tmp_path / "m.npz").read_bytes() == b"the other job's motion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "m.npz"]


def test_publish_without_hard_links_still_refuses_to_replace(tmp_path, monkeypatch):
    def no_links(*_):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    tmp, final = images.reserve_partial_path(tmp_path / "x.bin"), tmp_path / "x.bin"
    tmp.write_bytes(b"mine")
    assert publish.publish(tmp, final, overwrite=False) == final and final.read_bytes() == b"mine"
    tmp = images.reserve_partial_path(final)
    tmp.write_bytes(b"late")
    with pytest.raises(OutputError, match="appeared"):
        publish.publish(tmp, final, overwrite=False)
    assert final.read_bytes() == b"mine" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def appear_while_running(monkeypatch, module, content: bytes) -> None:
    """Make `module`'s writer find its output written by someone else right after it starts."""
    real = module.reserve_partial_path

    def reserve(path):
        tmp = real(path)
        Path(path).write_bytes(content)
        return tmp

    monkeypatch.setattr(module, "reserve_partial_path", reserve)


def test_a_job_whose_output_appears_while_it_runs_fails_and_keeps_it(demo_world, cli, tmp_path, monkeypatch):
    out = tmp_path / "out.mp4"
    appear_while_running(monkeypatch, encode, b"the other job's video")
    res = cli(*imitate_args(demo_world, out, demo_world.files.motion))
    assert res.returncode == 5 and "appeared while this job ran" in res.stderr, res.stderr
    assert out.read_bytes() == b"the other job's video" and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    out.unlink()
    res = cli(*imitate_args(demo_world, out, demo_world.files.motion, "--overwrite"))
    assert res.returncode == 0 and probe(out).frame_count == load_motion(demo_world.files.motion).frame_count


def test_a_swap_whose_image_appears_while_it_runs_fails_and_keeps_it(demo_world, cli, tmp_path, monkeypatch):
    f = demo_world.files
    out = tmp_path / "swap.png"
    appear_while_running(monkeypatch, images, b"the other job's image")
    res = cli("swap", "-s", f.source, "--source-smpl", f.source_smpl, "-r", f.reference, "--reference-smpl",
              f.reference_smpl, "-o", out, "--weights-dir", f.weights_dir, "--crop", "full", "--device", "cpu",
              "--generator", "none", "-q")
    assert res.returncode == 5 and "appeared" in res.stderr, res.stderr
    assert out.read_bytes() == b"the other job's image" and [p.name for p in tmp_path.iterdir()] == ["swap.png"]


# ----------------------------------------------------------------------------- ffmpeg's words


@pytest.fixture
def failing_encoder(tmp_path, monkeypatch):
    """IMPERSONATE_FFMPEG: an ffmpeg that fails, with five lines of its own, whenever it encodes."""
    from impersonator_cli.io.probe import find_ffmpeg

    script = tmp_path / "ffmpeg"
    lines = "\n".join(f"[libx264 @ 0x5{i}] broken encoder line {i}" for i in range(5))
    script.write_text(f'#!/bin/sh\ncase "$*" in *"-i pipe:"*) cat >&2 <<EOF\n{lines}\nEOF\n exit 1;; esac\n'
                      f'exec "{find_ffmpeg()}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("IMPERSONATE_FFMPEG", str(script))


def test_an_ffmpeg_failure_is_one_paragraph_and_its_lines_need_debug(demo_world, cli, capsys, tmp_path,
                                                                     failing_encoder):
    out = tmp_path / "out.mp4"
    res = cli(*imitate_args(demo_world, out, demo_world.files.motion))
    assert res.returncode == 6, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "broken encoder" not in res.stderr
    assert res.stderr.strip().endswith("Run again with --debug to see ffmpeg's output.")
    from support.cli import run_cli

    with pytest.raises(EncodeError):
        run_cli(capsys, "--debug", *imitate_args(demo_world, out, demo_world.files.motion))
    err = capsys.readouterr().err
    assert "broken encoder line 0" in err and "broken encoder line 4" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["ffmpeg"]


def test_a_corrupt_driver_is_one_paragraph_without_ffmpeg_lines(demo_world, cli, capsys, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(demo_world.files.driver.read_bytes()[:2000])
    res = cli(*imitate_args(demo_world, tmp_path / "out.mp4", corrupt))
    assert res.returncode == 3 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--debug" in res.stderr
    from support.cli import run_cli

    with pytest.raises(InputError) as err:
        run_cli(capsys, "--debug", *imitate_args(demo_world, tmp_path / "out.mp4", corrupt))
    assert err.value.detail and err.value.detail.splitlines()[0] in capsys.readouterr().err
