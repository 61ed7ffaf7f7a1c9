"""What a new user reads first: `--help` (no `<bool>` after flags, choices as choices), a short
`doctor` with a verdict, a `weights list` that fits 80 columns, and the one route to the weights
wherever their absence is met (a job's error, doctor, weights list)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from impersonator_cli.cli import options
from impersonator_cli.weights import store

IMPORT = "impersonate weights import pretrains.zip checkpoints.zip"


@pytest.fixture()
def no_weights(monkeypatch, tmp_path):
    """No weights anywhere: HOME/XDG in tmp (the real home untouched), no env folder, a bare cwd."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(store.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.delenv(store.ENV_WEIGHTS_REPO, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _says_the_route(text: str) -> None:
    flat = " ".join(text.split())  # rich wraps at the terminal width
    for words in (IMPORT, "pretrains.zip", "checkpoints.zip", "smpl.is.tue.mpg.de", "impersonate demo",
                  "--generator none --source-smpl", "github.com/svip-lab/impersonator"):
        assert words in flat, words


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("command", [(), ("imitate",), ("swap",), ("novelview",), ("demo",), ("doctor",),
                                     ("weights", "list"), ("weights", "download"), ("batch",)])
def test_help_shows_no_bool_metavar(cli, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "200")
    res = cli(*command, "--help")
    assert res.returncode == 0, res.stderr
    assert "<bool>" not in res.stdout and "--help" in res.stdout


def test_help_shows_fixed_value_sets_as_choices(cli, monkeypatch, demo_world, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    text = cli("imitate", "--help").stdout
    for shown in ("[256|512]", "[person|full]", "[auto|fp32|fp16|bf16]", "[auto|torch|nmr]"):
        assert shown in text, shown
    f = demo_world.files
    refused = cli("imitate", "--size", "300", "-s", f.source, "-d", f.motion, "-o", tmp_path / "c.mp4")
    assert refused.returncode == 2 and refused.stderr.strip().startswith("Usage error")  # the API's own check, one paragraph


def test_choice_aliases_render_as_choices_and_part_names_are_listed():
    """The aliases for --camera, --layout, --frame and --part (options.py), in a command of their own."""
    app = typer.Typer()

    @app.command()
    def job(camera: options.CameraOpt = "smooth", layout: options.LayoutOpt = "result",
            frame: options.FrameOpt = "crop", part: options.PartOpt = "body", flag: options.OverwriteOpt = False):
        print(camera, layout, frame, part, flag)

    help_text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "250"}).output
    for shown in ("[smooth|source|copy]", "[result|side-by-side]", "[crop|source]", "all | body | head | upper | lower",
                  "left_arm", "right_hand", "torso"):
        assert shown in help_text, shown
    assert "<bool>" not in help_text
    run = CliRunner().invoke(app, ["--layout", "side-by-side", "--camera", "copy"])
    assert run.exit_code == 0 and run.output.split()[:2] == ["copy", "side-by-side"]  # plain strings


def test_cli_value_sets_equal_the_api_ones():
    from impersonator_cli.body.camera import CAMERA_STRATEGIES
    from impersonator_cli.devices import PRECISIONS
    from impersonator_cli.jobs.imitate import FRAMES, LAYOUTS
    from impersonator_cli.pipeline.source import CROPS
    from impersonator_cli.render.backends import RENDERERS
    from impersonator_cli.render.flow import PART_GROUPS
    from impersonator_cli.demo.mannequin_assets import PART_NAMES

    assert options.CAMERAS == CAMERA_STRATEGIES and options.LAYOUTS == LAYOUTS and options.FRAMES == FRAMES
    assert options.CROPS == CROPS and options.PRECISIONS == ("auto", *PRECISIONS) and options.RENDERERS == RENDERERS
    assert options.PART_GROUPS == PART_GROUPS
    assert options.PART_NAMES == tuple(name.split("_", 1)[1] for name in PART_NAMES)


def test_download_help_says_there_is_no_official_repo(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = " ".join(cli("weights", "download", "--help").stdout.split())
    assert "no official" in text.lower() and "hmr.safetensors" in text


# ---------------------------------------------------------------- doctor


def test_doctor_is_short_ends_with_a_verdict_and_exits_0_without_weights(cli, monkeypatch, no_weights):
    monkeypatch.setenv("COLUMNS", "100")
    short = cli("doctor")
    assert short.returncode == 0, short.stderr
    lines = short.stdout.strip().splitlines()
    verdict = next(line for line in lines if line.startswith("ready for:"))
    assert "demo ✓" in verdict and "real photos ✗ (missing: hmr" in verdict and "CUDA" in verdict
    _says_the_route(short.stdout)
    assert short.stdout.count("smpl.is.tue.mpg.de") == 1  # the route once, not once per file
    verbose = cli("doctor", "--verbose")
    assert verbose.returncode == 0
    assert len(verbose.stdout.splitlines()) > 2 * len(lines)
    assert "ready for:" in verbose.stdout and "inpaintor_deepfillv2" in verbose.stdout
    flat = " ".join(verbose.stdout.split())
    assert flat.count(IMPORT) == 1 and flat.count("smpl.is.tue.mpg.de") == 1


def test_doctor_names_the_weights_folder(cli, monkeypatch, no_weights, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    text = cli("doctor").stdout
    assert str(tmp_path / "xdg" / "impersonate" / "weights") in text


# ---------------------------------------------------------------- weights list


def test_weights_list_fits_80_columns(cli, monkeypatch, no_weights, tmp_path):
    monkeypatch.setenv("COLUMNS", "80")
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 5)
    deep.mkdir(parents=True)
    (deep / "mapper.txt").write_text("v 0 0 0\n")
    user = tmp_path / "xdg" / "impersonate" / "weights"
    user.mkdir(parents=True)
    (user / "head.json").write_text('{"face": [1]}')  # found elsewhere: its path goes under the table
    res = cli("weights", "list", "--weights-dir", deep)
    assert res.returncode == 0, res.stderr
    too_long = [line for line in res.stdout.splitlines() if len(line) > 80]
    assert too_long == []
    assert "generator_fashion_place" in res.stdout and "Missing for inference" in res.stdout
    _says_the_route(res.stdout)
    assert str(user / "head.json").replace("/", "") in res.stdout.replace("\n", "").replace("/", "")


# ---------------------------------------------------------------- a job without weights


def test_a_job_without_weights_prints_the_route(cli, demo_world, no_weights):
    f = demo_world.files
    res = cli("imitate", "-s", f.source, "-d", f.motion, "-o", no_weights / "out.mp4", "--device", "cpu")
    assert res.returncode == 4 and res.stdout == ""
    assert res.stderr.strip().startswith("Weights error") and len(res.stderr.strip().splitlines()) == 1  # one paragraph
    _says_the_route(res.stderr)


def test_a_warp_only_job_without_mesh_assets_prints_the_route(cli, demo_world, no_weights):
    f = demo_world.files
    res = cli("imitate", "-s", f.source, "--source-smpl", f.source_smpl, "-d", f.motion,
              "-o", no_weights / "out.mp4", "--generator", "none", "--device", "cpu")
    assert res.returncode == 4 and "mesh assets" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    _says_the_route(res.stderr)


def test_resolve_names_the_official_file_and_the_route(no_weights):
    with pytest.raises(Exception) as err:
        store.resolve("generator_fashion_place")
    text = str(err.value)
    assert "lwb_imper_fashion_place/net_epoch_30_id_G.pth in checkpoints.zip" in text
    _says_the_route(text)
