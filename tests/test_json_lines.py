"""`--json` prints exactly one line on stdout, on success and on every kind of failure, so that
`impersonate ... --json >> runs.jsonl` always makes a JSON Lines file."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

ERROR_KEYS = {"kind", "message", "hint", "exit_code", "path"}


def one_line(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def imitate(world, out, *extra):
    f = world.files
    return ["imitate", "-s", f.source, "--source-smpl", f.source_smpl, "-d", f.motion, "-o", out,
            "--weights-dir", f.weights_dir, "--crop", "full", "--device", "cpu", "--generator", "none", "-q",
            "--json", *extra]


def test_success_is_one_line_with_every_phase_timed(demo_world, cli, tmp_path):
    res = cli(*imitate(demo_world, tmp_path / "out.mp4"))
    assert res.returncode == 0, res.stderr
    summary = one_line(res.stdout)
    assert summary["output"] == str(tmp_path / "out.mp4") and summary["frames"] == 8 and summary["fps"] == "25/1"
    assert {"load", "prepare", "motion", "render_encode"} <= set(summary["timings_s"])


@pytest.mark.parametrize("case,code", [("size", 2), ("not-an-int", 2), ("missing-source", 3), ("no-weights", 4),
                                       ("exists", 5)])
def test_each_error_is_one_line_with_its_exit_code(demo_world, cli, tmp_path, case, code):
    out = tmp_path / "out.mp4"
    args = imitate(demo_world, out)
    if case == "size":
        args += ["--size", "300"]
    elif case == "not-an-int":
        args += ["--max-frames", "many"]
    elif case == "missing-source":
        args[2] = tmp_path / "nobody.png"
    elif case == "no-weights":
        (tmp_path / "empty").mkdir()
        args[args.index("--weights-dir") + 1] = tmp_path / "empty"
    else:
        out.write_bytes(b"earlier result")
    res = cli(*args)
    assert res.returncode == code, res.stderr
    error = one_line(res.stdout)["error"]
    assert set(error) == ERROR_KEYS and error["exit_code"] == code and error["message"]
    if case == "missing-source":
        assert error["path"] == str(tmp_path / "nobody.png")


def test_an_interrupt_is_one_line_too(demo_world, cli, tmp_path, monkeypatch):
    from impersonator_cli.batch import worker

    def ctrl_c(*_, **__):  # the user presses Ctrl-C while the job runs
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)  # the handler interrupts this

    monkeypatch.setattr(worker.Worker, "run", ctrl_c)
    res = cli(*imitate(demo_world, tmp_path / "out.mp4"))
    assert res.returncode == 130
    error = one_line(res.stdout)["error"]
    assert error["kind"] == "Interrupted" and error["exit_code"] == 130 and "no output" in error["message"]
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("args", [["doctor", "--json"], ["weights", "list", "--json"], ["weights", "verify", "--json"]])
def test_other_commands_print_one_line(cli, tmp_path, args):
    res = cli(*args, "--weights-dir", tmp_path)
    one_line(res.stdout)
