"""The CLI's error boundary through the real console entry point (subprocesses, real exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from impersonator_cli import __version__
from impersonator_cli.errors import InputError, OutputError, UsageError, WeightsError


def run_cli(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "impersonator_cli", *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
    )


def test_version_and_help():
    res = run_cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"impersonate {__version__}"
    res = run_cli("--help")
    assert res.returncode == 0
    assert "doctor" in res.stdout and "weights" in res.stdout


def test_unknown_command_is_usage_error_without_traceback():
    res = run_cli("no-such-command")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


def test_doctor_json_reports_missing_weights(tmp_path):
    res = run_cli("doctor", "--json", "--weights-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert {"python", "torch", "ffmpeg", "renderer", "weights"} <= set(report)
    ffmpeg_rows = {row["item"]: row for row in report["ffmpeg"]}
    assert any(row["status"] == "ok" for row in ffmpeg_rows.values())
    weights = report["weights"]
    assert any(row["status"] == "missing" for row in weights)
    assert all(row["hint"] for row in weights if row["status"] == "missing")


def test_doctor_reports_the_cpu_kernel_choice(tmp_path):
    def kernels(**env):
        res = run_cli("doctor", "--json", "--weights-dir", str(tmp_path), env={**os.environ, **env})
        return {row["item"]: row for row in json.loads(res.stdout)["torch"]}["cpu kernels"]["value"]

    default = kernels()
    assert default.startswith("fast") and ("heap" in default) == sys.platform.startswith("linux")
    chosen = kernels(IMPERSONATE_CPU_KERNELS="reference", IMPERSONATE_MALLOC_TUNING="0")
    assert chosen.startswith("reference") and "untouched" in chosen


@pytest.mark.parametrize(
    "error, code",
    [(UsageError("x"), 2), (InputError("x"), 3), (WeightsError("x"), 4), (OutputError("x"), 5)],
)
def test_exit_codes_are_distinct(error, code):
    assert error.exit_code == code


def test_error_paragraph_names_file_and_hint():
    err = InputError("Cannot read the video", path="/tmp/a b.mp4", hint="Check that it plays in a video player.")
    text = err.paragraph()
    assert "/tmp/a b.mp4" in text and text.endswith("player.") and "\n" not in text


def test_typed_error_becomes_paragraph_and_exit_code(tmp_path):
    empty = tmp_path / "no weights here"
    res = run_cli("weights", "verify", "--weights-dir", str(empty))
    assert res.returncode == 4
    assert "Traceback" not in res.stderr
    assert "Weights error" in res.stderr and "weights import" in res.stderr
    res = run_cli("--debug", "weights", "verify", "--weights-dir", str(empty))
    assert res.returncode != 0 and "Traceback" in res.stderr
