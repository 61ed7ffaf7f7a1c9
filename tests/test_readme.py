"""The README's Python example runs as written, on the files `impersonate demo` writes.

Every ```python block of README.md is executed, in order and in one namespace, with the working folder
holding `impersonate-demo/`: the shared demo world (conftest's `demo_world`) under the names the demo
command gives its files. Its outputs are then checked: the videos have the expected frame counts,
the image is an image of the job's size.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest

from impersonator_cli.body.motion import load_motion
from impersonator_cli.defaults import DEFAULT_SIZE
from impersonator_cli.io.images import read_image
from impersonator_cli.io.probe import probe

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block of the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.fixture
def demo_folder(demo_world, tmp_path, monkeypatch) -> Path:
    """A working folder whose `impersonate-demo/` links to the demo world's files (names as the
    demo command writes them). Links, not copies: the session fails if a test changes the world."""
    demo = tmp_path / "impersonate-demo"
    demo.mkdir()
    for entry in demo_world.folder.iterdir():
        (demo / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_python_example_runs_on_the_demo_files(demo_world, demo_folder):
    blocks = python_blocks()
    assert blocks, "README.md has no ```python block"
    before = set(demo_folder.iterdir())
    namespace: dict = {"__name__": "readme"}
    for line, code in blocks:
        exec(compile(code, f"{README}:{line}", "exec"), namespace)  # noqa: S102 (running it is the point)

    made = {p.name for p in set(demo_folder.iterdir()) - before}
    assert made == {"dancing.mp4", "new-top.png", "orbit.mp4"}
    dance = probe(demo_folder / "dancing.mp4")
    assert dance.frame_count == len(load_motion(demo_world.files.motion).poses) == namespace["result"].frames
    assert dance.fps == Fraction(25) and dance.has_audio
    assert read_image(demo_folder / "new-top.png").shape == (DEFAULT_SIZE, DEFAULT_SIZE, 3)
    assert probe(demo_folder / "orbit.mp4").frame_count == 30
