"""End to end through the CLI's real entry point on the shared mannequin world (conftest's
`demo_world`). Jobs run in-process (`impersonator_cli.cli.main`: real exit codes, stdout and stderr);
only the process-level subjects start a subprocess: Ctrl-C on a running job and the example batch
script."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from support.e2e_world import FRAMES
from impersonator_cli.io import timing
from impersonator_cli.io.images import read_image, write_image
from impersonator_cli.io.probe import probe
from impersonator_cli.io.video import read_frames


@pytest.fixture
def world(demo_world):
    return demo_world


def imitate_args(world, out, *extra, driver=None):
    f = world.files
    return ["imitate", "-s", f.source, "--source-smpl", f.source_smpl, "-d", driver or f.motion, "-o", out,
            "--weights-dir", f.weights_dir, "--crop", "full", "--device", "cpu", "-q", *extra]


def frames_of(path):
    with read_frames(path) as src:
        return np.stack(list(src))


def test_imitate_from_motion_keeps_count_fps_and_audio(world, cli, tmp_path):
    out = tmp_path / "out.mp4"
    res = cli(*imitate_args(world, out, "--generator", "none", "--audio-file", world.files.driver, "--json"))
    assert res.returncode == 0, res.stderr
    info = probe(out)
    assert info.frame_count == FRAMES and info.fps == Fraction(25)
    assert info.has_audio and abs(info.audio_duration - info.duration) < 0.06
    assert stat.S_IMODE(out.stat().st_mode) & 0o044  # readable by others under the usual umask
    assert '"frames": 8' in res.stdout


@pytest.mark.slow  # HMR (a ResNet-50) on every driver frame, three times
def test_driver_as_video_frames_folder_and_motion_file_agree(world, cli, tmp_path):
    f = world.files
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames_of(f.driver)):
        write_image(folder / f"{i:04d}.png", frame)
    motion = tmp_path / "driver.motion.npz"
    # Same batch size as imitate's default: with this constant-output HMR the box tracker's feedback
    # depends on batch boundaries (a real HMR, consistent with the pixels, converges instead).
    assert cli("motion", "extract", f.driver, "-o", motion, "--weights-dir", f.weights_dir, "--device", "cpu",
               "--batch-size", 4, "-q").returncode == 0
    outs = {}
    for name, driver in (("video", f.driver), ("folder", folder), ("motion", motion)):
        outs[name] = tmp_path / f"{name}.mp4"
        res = cli(*imitate_args(world, outs[name], "--generator", "none", "--no-audio", driver=driver))
        assert res.returncode == 0, res.stderr
    video, folder_frames, motion_frames = (frames_of(outs[k]) for k in ("video", "folder", "motion"))
    assert len(video) == FRAMES and probe(outs["video"]).has_audio is False
    assert np.array_equal(video, motion_frames)
    assert np.abs(video.astype(int) - folder_frames).mean() < 1.0  # PNG frames vs decoded: same bodies
    assert probe(outs["folder"]).fps == Fraction(25)  # a frame folder plays at the default rate


def test_side_by_side_doubles_the_width_and_keeps_the_driver_audio(world, cli, tmp_path):
    out = tmp_path / "sbs.mp4"
    res = cli(*imitate_args(world, out, "--generator", "none", "--layout", "side-by-side", driver=world.files.driver))
    assert res.returncode == 0, res.stderr
    info = probe(out)
    assert (info.width, info.height) == (512, 256) and info.frame_count == FRAMES and info.has_audio


def test_lwb_generator_end_to_end(world, cli, tmp_path):
    """The CLI's LWB job is the API's computation with that generator file, and not the warp-only
    result: the random-weight generator's colour and attention maps replace the warped pixels."""
    from impersonator_cli.api import ImitateOptions, Impersonator, SourceOptions

    f = world.files
    out, warp_only, api_out = tmp_path / "lwb.mp4", tmp_path / "warp.mp4", tmp_path / "api.mp4"
    res = cli(*imitate_args(world, out, "--generator", world.small_generator, "--max-frames", 4, "--batch-size", 3))
    assert res.returncode == 0, res.stderr
    res = cli(*imitate_args(world, warp_only, "--generator", "none", "--max-frames", 4, "--batch-size", 3))
    assert res.returncode == 0, res.stderr
    imp = Impersonator(weights_dir=f.weights_dir, device="cpu", generator=str(world.small_generator))
    src = imp.prepare(f.source, smpl=f.source_smpl, options=SourceOptions(crop="full"))
    imp.imitate([src], f.motion, api_out, options=ImitateOptions(max_frames=4, batch_size=3))
    lwb, plain = frames_of(out), frames_of(warp_only)
    assert lwb.shape == plain.shape == (4, 256, 256, 3)
    assert np.array_equal(lwb, frames_of(api_out))  # same file, same inputs, same arithmetic
    assert np.abs(lwb.astype(int) - plain).mean() > 10  # the generator's output, not the warped source


def test_novelview_frame_count_and_single_view_image(world, cli, tmp_path):
    f = world.files
    common = ["-s", f.source, "--source-smpl", f.source_smpl, "--weights-dir", f.weights_dir, "--crop", "full",
              "--generator", "none", "--device", "cpu", "-q"]
    out = tmp_path / "orbit.mp4"
    assert cli("novelview", *common, "--frames", 7, "-o", out).returncode == 0
    assert probe(out).frame_count == 7
    png = tmp_path / "side.png"
    assert cli("novelview", *common, "--yaw", 90, "-o", png).returncode == 0
    assert read_image(png).shape == (256, 256, 3)
    bad = cli("novelview", *common, "--yaw", 90, "--yaw", 180, "-o", tmp_path / "two.png")
    assert bad.returncode == 2 and not (tmp_path / "two.png").exists()


def test_swap_part_lists_change_only_their_parts(world, cli, tmp_path):
    f = world.files
    outs = {}
    for part in ("upper", "lower"):
        outs[part] = tmp_path / f"{part}.png"
        res = cli("swap", "-s", f.source, "--source-smpl", f.source_smpl, "-r", f.reference, "--reference-smpl",
                  f.reference_smpl, "--part", part, "-o", outs[part], "--weights-dir", f.weights_dir, "--crop",
                  "full", "--generator", "none", "--device", "cpu", "-q")
        assert res.returncode == 0, res.stderr
    upper, lower, src = read_image(outs["upper"]), read_image(outs["lower"]), read_image(f.source)
    from impersonator_cli.pipeline.rig import load_body_model
    from impersonator_cli.render.body_view import view_body
    import torch
    from impersonator_cli.body.motion import load_motion

    body = load_body_model(f.weights_dir)
    theta = torch.from_numpy(load_motion(f.source_smpl).thetas).float()
    parts = body.maps.render_parts(view_body(body.smpl, theta[:, :3], theta[:, 3:75], theta[:, 75:], 256).raster.face_index)[0]
    names = body.maps.part_names
    idx = lambda *keys: [i for i, n in enumerate(names) if any(k in n for k in keys)]
    head = parts[idx("head")].sum(0).bool().numpy()
    legs = parts[idx("leg", "foot")].sum(0).bool().numpy()
    arms_torso = parts[idx("torso", "arm", "hand")].sum(0).bool().numpy()
    inner = lambda m: ~_grow(~m)  # away from part boundaries (bilinear sampling mixes neighbours)
    assert np.array_equal(upper[inner(head)], lower[inner(head)])  # the head is never swapped
    assert np.abs(upper[inner(legs)].astype(int) - lower[inner(legs)]).mean() > 5  # legs swapped in "lower" only
    assert np.abs(upper[inner(arms_torso)].astype(int) - src[inner(arms_torso)]).mean() > 20  # new upper clothes


def _grow(mask, r=2):
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


@pytest.mark.parametrize("kind", ["rgba", "16bit", "grey"])
def test_odd_source_images_work(world, cli, tmp_path, kind):
    import cv2

    f = world.files
    rgb = read_image(f.source)
    folder = tmp_path / "dossier à espaces"
    folder.mkdir()
    path = folder / f"source ünï {kind}.png"
    if kind == "rgba":
        cv2.imwrite(str(path), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]))
    elif kind == "16bit":
        cv2.imwrite(str(path), rgb[..., ::-1].astype(np.uint16) * 257)
    else:
        cv2.imwrite(str(path), cv2.cvtColor(rgb[..., ::-1], cv2.COLOR_BGR2GRAY))
    out = folder / "résultat.png"
    res = cli("novelview", "-s", path, "--source-smpl", f.source_smpl, "--yaw", 30, "-o", out, "--weights-dir",
              f.weights_dir, "--crop", "full", "--generator", "none", "--device", "cpu", "-q")
    assert res.returncode == 0, res.stderr
    assert read_image(out).shape == (256, 256, 3)


def test_one_frame_video_driver(world, cli, tmp_path):
    from impersonator_cli.io.encode import VideoWriter

    one = tmp_path / "one.mp4"
    with VideoWriter(one, 30) as w:
        w.write(frames_of(world.files.driver)[0])
    out = tmp_path / "out.mp4"
    res = cli(*imitate_args(world, out, "--generator", "none", driver=one))
    assert res.returncode == 0, res.stderr
    assert probe(out).frame_count == 1 and probe(out).fps == Fraction(30)


def test_bad_inputs_fail_cleanly(world, cli, tmp_path, monkeypatch):
    """Real failing jobs exit with the README's codes: 2 usage, 3 input, 4 weights, 5 output,
    6 environment; no traceback, a short message, no output file."""
    f = world.files
    out = tmp_path / "out.mp4"
    cases = {
        "missing source": (imitate_args(world, out, "--generator", "none")[:1] + ["-s", tmp_path / "nope.png"]
                           + imitate_args(world, out, "--generator", "none")[3:], 3),
        "video as imitate source": (["imitate", "-s", f.driver, "-d", f.motion, "-o", out, "--weights-dir",
                                     f.weights_dir, "--generator", "none", "--device", "cpu"], 3),
        "missing generator weights": (imitate_args(world, out), 4),
        "unwritable output": (imitate_args(world, tmp_path / "no such dir" / "o.mp4", "--generator", "none"), 5),
    }
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(f.driver.read_bytes()[:2000])
    cases["corrupt driver"] = (imitate_args(world, out, "--generator", "none", driver=corrupt), 3)
    for name, (args, code) in cases.items():
        res = cli(*args)
        assert res.returncode == code, (name, res.returncode, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 8, name
        assert not out.exists(), name
    assert "generator_fashion_place" in cli(*imitate_args(world, out)).stderr
    out.write_bytes(b"keep me")
    res = cli(*imitate_args(world, out, "--generator", "none"))
    assert res.returncode == 5 and out.read_bytes() == b"keep me"
    out.unlink()
    bad = cli(*imitate_args(world, out, "--generator", "none", "--personalize"))  # nothing to tune
    assert bad.returncode == 2 and "generator" in bad.stderr and not out.exists(), bad.stderr
    monkeypatch.setenv("IMPERSONATE_FFMPEG", str(tmp_path / "no-ffmpeg"))
    res = cli(*imitate_args(world, out, "--generator", "none"))
    assert res.returncode == 6 and "IMPERSONATE_FFMPEG" in res.stderr and not out.exists(), res.stderr


@pytest.mark.slow  # a real process: interpreter start, HMR, then SIGINT
def test_ctrl_c_leaves_no_output(world, tmp_path):
    out = tmp_path / "long.mp4"
    args = imitate_args(world, out, "--generator", "none", "--batch-size", 1, "--layout", "side-by-side",
                        driver=world.files.driver)
    proc = subprocess.Popen([sys.executable, "-m", "impersonator_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".long.mp4.partial") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".long")]


@pytest.mark.slow  # the shell script starts one process per photo
def test_example_batch_script(world, tmp_path):
    f = world.files
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(f.source, photos / "a.png")
    shutil.copy(f.reference, photos / "b.png")
    (photos / "notes.txt").write_text("not a photo")
    script = Path(__file__).resolve().parents[1] / "examples" / "batch_imitate.sh"
    env = {**os.environ, "IMPERSONATE_WEIGHTS_DIR": str(f.weights_dir), "IMPERSONATE_DEVICE": "cpu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["bash", script, f.driver, photos, tmp_path / "out", "--generator", "none",
                          "--max-frames", "3"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "out" / "summary.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all('"frames": 3' in line for line in lines)
    assert probe(tmp_path / "out" / "a.mp4").frame_count == 3


@pytest.mark.slow  # personalization e2e: tuning forwards and backwards
def test_personalization_changes_the_result_and_is_cached(world, cli, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("IMPERSONATE_CACHE_DIR", str(tmp_path / "cache"))
    base = ["--generator", world.small_generator, "--max-frames", 2, "--json"]
    plain = tmp_path / "plain.mp4"
    assert cli(*imitate_args(world, plain, *base)).returncode == 0
    runs = []
    for i in range(2):
        out = tmp_path / f"tuned{i}.mp4"
        res = cli(*imitate_args(world, out, *base, "--personalize", "--personalize-steps", 2))
        assert res.returncode == 0, res.stderr
        runs.append((frames_of(out), json.loads(res.stdout)["warnings"]))
    assert any("2 steps" in w for w in runs[0][1]) and any("cache" in w for w in runs[1][1])
    assert np.array_equal(runs[0][0], runs[1][0])  # the cached tuning gives the same video
    assert np.abs(runs[0][0].astype(int) - frames_of(plain)).mean() > 0.5  # tuning changed the generator


@pytest.mark.parametrize("kind", ["rotated", pytest.param("vfr", marks=pytest.mark.slow), "odd-size"])  # vfr: 33 frames
def test_odd_drivers_work(world, cli, tmp_path, kind):
    from support import media as media

    driver = tmp_path / f"{kind}.mp4"
    if kind == "rotated":
        media.make_clip(driver, size=(64, 48), frames=5, rotation=90)  # a phone clip: 48x64 upright
    elif kind == "vfr":
        media.make_vfr_clip(driver, frames=33)
    else:
        media.make_clip(driver, size=(65, 49), frames=5, pix_fmt="yuv444p")
    info = probe(driver)
    with read_frames(driver) as frames:
        expected = sum(1 for _ in frames)
    if kind == "vfr":  # every frame, held on the constant-rate output for its own duration
        expected = int(timing.hold_counts(info.frame_times, info.fps).sum())
    out = tmp_path / "out.mp4"
    res = cli(*imitate_args(world, out, "--generator", "none", "--layout", "side-by-side", driver=driver))
    assert res.returncode == 0, res.stderr
    result = probe(out)
    assert result.frame_count == expected and result.fps == info.fps
    assert (result.width, result.height) == (512, 256) and result.has_audio == info.has_audio


def test_swap_with_a_video_source_writes_a_video(world, cli, tmp_path):
    f = world.files
    out = tmp_path / "swapped.mp4"
    res = cli("swap", "-s", f.driver, "-r", f.reference, "--reference-smpl", f.reference_smpl, "--part", "upper",
              "-o", out, "--weights-dir", f.weights_dir, "--crop", "full", "--generator", "none", "--device", "cpu",
              "-q")
    assert res.returncode == 0, res.stderr
    info, src = probe(out), probe(f.driver)
    assert info.frame_count == src.frame_count and info.fps == src.fps and info.has_audio
    frames, original = frames_of(out), frames_of(f.driver)
    assert np.abs(frames.astype(int) - original).mean() > 2  # clothes changed on every frame


def test_demo_command_writes_viewable_results(tmp_path, cli):
    out = tmp_path / "demo"
    res = cli("demo", "-o", out, "--frames", 6, "--device", "cpu", "--json", "-q")
    assert res.returncode == 0, res.stderr
    import json

    summary = json.loads(res.stdout)
    assert set(summary) == {"imitate", "imitate_side_by_side", "swap", "novelview", "note"}
    assert probe(out / "imitate.mp4").frame_count == 6 and probe(out / "imitate.mp4").has_audio
    assert probe(out / "imitate-side-by-side.mp4").width == 512
    assert probe(out / "novelview.mp4").frame_count == 6
    swap = read_image(out / "swap.png")
    assert swap.shape == (256, 256, 3) and swap.std() > 10
    again = cli("demo", "-o", out, "--frames", 6, "--device", "cpu", "-q")
    assert again.returncode == 5  # results exist: --overwrite required


def test_frame_source_pastes_the_result_back_into_the_photo(world, cli, tmp_path):
    f = world.files
    photo = read_image(f.source)
    wide = np.concatenate([photo[:, :40][:, ::-1], photo, photo[:, -60:][:, ::-1]], axis=1)  # 356 x 256
    path = tmp_path / "wide.png"
    write_image(path, wide)
    out = tmp_path / "placed.mp4"
    res = cli("imitate", "-s", path, "-d", f.motion, "-o", out, "--weights-dir", f.weights_dir, "--generator", "none",
              "--frame", "source", "--max-frames", 3, "--device", "cpu", "-q")
    assert res.returncode == 0, res.stderr
    info = probe(out)
    assert (info.width, info.height) == (356, 256) and info.frame_count == 3


def test_paste_back_inverts_the_crop_and_keeps_the_rest():
    from impersonator_cli.body.tracking import snap_box, square_crop
    from impersonator_cli.io.images import resize_rgb
    from impersonator_cli.pipeline.source import paste_back

    rng = np.random.default_rng(0)
    frame = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    frame = np.clip(frame.astype(int) // 8 * 8, 0, 255).astype(np.uint8)
    box = snap_box(np.array([50.0, 40.0, 64.0]))
    crop = resize_rgb(square_crop(frame, box), (64, 64))  # same size: an exact crop
    placed = paste_back(frame, crop, box)
    assert np.array_equal(placed, frame)  # putting the crop back changes nothing
    marked = paste_back(frame, np.zeros_like(crop), box)
    x0, y0 = 50 - 32, 40 - 32
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y0 + 64, x0:x0 + 64] = False
    assert np.array_equal(marked[outside], frame[outside])  # nothing outside the box moves
    assert marked[y0 + 8:y0 + 56, x0 + 8:x0 + 56].max() == 0  # the inside is the result
    edge = marked[y0 + 32, x0].astype(int)
    assert 0 < edge.sum() < frame[y0 + 32, x0].astype(int).sum()  # feathered border
