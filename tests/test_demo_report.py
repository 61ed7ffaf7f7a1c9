"""The demo says what it does: a named line per phase off a terminal, and a closing note that it ran
warp-only with classical inpainting (in human mode and in --json)."""

from __future__ import annotations

import json


def test_the_demo_names_each_phase_and_what_it_ran(cli, tmp_path):
    res = cli("demo", "-o", tmp_path / "demo", "--frames", 3, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    phases = [line for line in lines if line.endswith(" ...")]
    assert [p.split(":")[0].split(" ")[0] for p in phases] == ["making", "loading", "imitate", "imitate", "swap",
                                                               "novel"]
    assert "imitate: 3 frames ..." in phases
    note = res.stderr[res.stderr.index("note:"):]
    assert "warp-only" in note and "classical inpainting" in note and "weights" in note
    assert len(res.stdout.splitlines()) == 4  # one line per result


def test_the_demo_json_is_one_line_with_the_note(cli, tmp_path):
    res = cli("demo", "-o", tmp_path / "demo", "--frames", 2, "--device", "cpu", "--json", "-q")
    assert res.returncode == 0 and res.stderr == ""
    (line,) = res.stdout.splitlines()
    summary = json.loads(line)
    assert summary["imitate"]["frames"] == 2 and "warp-only" in summary["note"]
