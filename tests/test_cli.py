"""The CLI's error boundary through its real entry point `impersonator_cli.cli.main`, run in-process
(real exit codes and streams via capsys); one test runs `python -m impersonator_cli` as a process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from impersonator_cli import __version__
from impersonator_cli.errors import (
    EXIT_INTERRUPTED, EnvironmentProblem, InputError, OutputError, UsageError, WeightsError,
)
from support.cli import run_cli


def test_version_and_help(capsys):
    res = run_cli(capsys, "--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"impersonate {__version__}"
    res = run_cli(capsys, "--help")
    assert res.returncode == 0
    assert "doctor" in res.stdout and "weights" in res.stdout


def test_python_dash_m_is_a_working_process_with_separate_streams(tmp_path):
    """The process itself: `python -m impersonator_cli` starts, results go to stdout, errors to
    stderr, and the exit code reaches the shell."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "impersonator_cli", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"impersonate {__version__}" and res.stderr == ""
    res = run("weights", "verify", "--weights-dir", str(tmp_path / "none"))
    assert res.returncode == 4 and res.stdout == "" and "Weights error" in res.stderr


def test_unknown_command_is_usage_error_without_traceback(capsys):
    res = run_cli(capsys, "no-such-command")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "no-such-command" in res.stderr


def test_doctor_json_reports_missing_weights(tmp_path, capsys):
    res = run_cli(capsys, "doctor", "--json", "--weights-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert {"python", "torch", "ffmpeg", "renderer", "weights"} <= set(report)
    ffmpeg_rows = {row["item"]: row for row in report["ffmpeg"]}
    assert any(row["status"] == "ok" for row in ffmpeg_rows.values())
    weights = report["weights"]
    assert any(row["status"] == "missing" for row in weights)
    assert all(row["hint"] for row in weights if row["status"] == "missing")


def test_doctor_reports_the_cpu_kernel_choice(tmp_path, capsys, monkeypatch):
    def kernels():
        res = run_cli(capsys, "doctor", "--json", "--weights-dir", tmp_path)
        return {row["item"]: row for row in json.loads(res.stdout)["torch"]}["cpu kernels"]["value"]

    monkeypatch.delenv("IMPERSONATE_CPU_KERNELS", raising=False)
    monkeypatch.delenv("IMPERSONATE_MALLOC_TUNING", raising=False)
    default = kernels()
    assert default.startswith("fast") and ("heap" in default) == sys.platform.startswith("linux")
    monkeypatch.setenv("IMPERSONATE_CPU_KERNELS", "reference")
    monkeypatch.setenv("IMPERSONATE_MALLOC_TUNING", "0")
    chosen = kernels()
    assert chosen.startswith("reference") and "untouched" in chosen


@pytest.mark.parametrize("error, code, title", [
    (UsageError("x"), 2, "Usage error"), (InputError("x"), 3, "Input error"),
    (WeightsError("x"), 4, "Weights error"), (OutputError("x"), 5, "Output error"),
    (EnvironmentProblem("x"), 6, "Environment error"), (RuntimeError("x"), 1, "Internal error"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, ""),  # Typer >= 0.16 turns Ctrl-C into a silent Exit(130)
])
def test_the_error_boundary_turns_each_failure_into_its_documented_exit_code(error, code, title, capsys,
                                                                              monkeypatch, tmp_path):
    """An error raised inside a command leaves main() as the README's exit code and one message
    (the codes of real failing jobs are checked end to end in test_e2e.py)."""
    from impersonator_cli.cli import doctor

    def fail(**_):
        raise error

    monkeypatch.setattr(doctor, "collect_report", fail)
    res = run_cli(capsys, "doctor", "--weights-dir", tmp_path)
    assert res.returncode == code and res.stdout == ""
    assert res.stderr.startswith(title) and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= (3 if title else 1)


def test_error_paragraph_names_file_and_hint():
    err = InputError("Cannot read the video", path="/tmp/a b.mp4", hint="Check that it plays in a video player.")
    text = err.paragraph()
    assert "/tmp/a b.mp4" in text and text.endswith("player.") and "\n" not in text


def test_typed_error_becomes_paragraph_and_exit_code(tmp_path, capsys):
    empty = tmp_path / "no weights here"
    res = run_cli(capsys, "weights", "verify", "--weights-dir", empty)
    assert res.returncode == 4
    assert "Traceback" not in res.stderr
    assert "Weights error" in res.stderr and "weights import" in res.stderr
    with pytest.raises(WeightsError):  # --debug: the boundary lets the error (and its traceback) through
        run_cli(capsys, "--debug", "weights", "verify", "--weights-dir", empty)
