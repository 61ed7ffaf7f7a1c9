"""`impersonate weights ...`: list, verify, import, download. Thin: parse, call the API, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from impersonator_cli.weights import store as weights
from impersonator_cli.cli.options import JsonOpt, WeightsDirOpt

weights_app = typer.Typer(
    help="Weight files: see what is there, verify, import the official release, download.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_STYLE = {"verified": "green", "present": "green", "modified": "red", "missing": "red",
          "ok": "green", "mismatch": "red"}


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _print_json(data: object) -> None:
    print(json.dumps(data))


@weights_app.command("list")
def list_weights(
    weights_dir: WeightsDirOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Recompute sha256 against manifest.json (slow).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Every weight file: whether it is here, what it is needed for, which official archive has it."""
    rows = weights.status(weights_dir, check=check)
    if json_out:
        _print_json([r.to_dict() for r in rows])
        return
    folder = weights.target_dir(weights_dir)
    out = _out_wrapped()
    out.print(f"Weights in {folder}", markup=False)
    table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    for col in ("name", "state", "needed for", "from"):
        table.add_column(col, overflow="fold")
    for r in rows:
        optional_gone = r.state == "missing" and not r.required_for
        state = "not present" if optional_gone else r.state
        style = "yellow" if optional_gone else _STYLE.get(r.state, "")
        table.add_row(r.name, f"[{style}]{state}[/]", _needed_for(r.required_for), _origin(r.name))
    out.print(table)
    elsewhere = [r for r in rows if r.path is not None and r.path.parent != folder]
    for r in elsewhere:
        out.print(f"{r.name}: {r.path}", markup=False)
    lacking = [r.name for r in rows if r.state == "missing" and r.required_for]
    if lacking:
        out.print(f"Missing for inference: {', '.join(lacking)}. {weights.route(weights_dir)}", markup=False)


def _out_wrapped() -> Console:
    """stdout, wrapped at the terminal's width ($COLUMNS): paths and the route fold instead of running on."""
    return Console(highlight=False)


def _needed_for(jobs: tuple[str, ...]) -> str:
    from impersonator_cli.weights.registry import INFERENCE

    return "every job" if tuple(jobs) == INFERENCE else (", ".join(jobs) or "optional")


def _origin(name: str) -> str:
    from impersonator_cli.weights.registry import get

    row = get(name)
    return "torchvision" if row.release == "torchvision" else f"{row.release}.zip"


@weights_app.command("verify")
def verify_weights(weights_dir: WeightsDirOpt = None, json_out: JsonOpt = False) -> None:
    """Recompute the sha256 of every file in manifest.json; exit code 4 if any differs or is gone."""
    report = weights.verify(weights_dir)
    if json_out:
        _print_json(report.to_dict())
    else:
        table = Table(title=f"Verify {report.weights_dir}", title_justify="left")
        for col in ("file", "status", "sha256 (manifest)", "sha256 (now)"):
            table.add_column(col, overflow="fold")
        for f in report.files:
            table.add_row(f.file, f"[{_STYLE[f.status]}]{f.status}[/]", f.expected_sha256[:16],
                          (f.actual_sha256 or "-")[:16])
        _out().print(table)
        if report.unrecorded:
            _out().print(f"Not in the manifest: {', '.join(report.unrecorded)}", markup=False)
    if not report.ok:
        bad = [f.file for f in report.files if f.status != "ok"]
        _err().print(f"Weights error: {', '.join(bad)} differ from manifest.json or are missing. Import or "
                     "download them again.", markup=False)
        raise typer.Exit(code=4)


@weights_app.command("import")
def import_weights(
    sources: Annotated[List[Path], typer.Argument(help="pretrains.zip, checkpoints.zip (or extracted folders, "
                                                     "or vgg19-dcbb9e9d.pth), in any order.", show_default=False)],
    weights_dir: WeightsDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check and convert the official release into the weights folder (all or nothing)."""
    from impersonator_cli.weights.importer import import_release

    report = import_release(sources, weights_dir)
    if json_out:
        _print_json(report.to_dict())
        return
    table = Table(title=f"Imported into {report.weights_dir}", title_justify="left")
    for col in ("name", "files", "from"):
        table.add_column(col, overflow="fold")
    for item in report.imported:
        table.add_row(item.name, ", ".join(item.files), item.source)
    _out().print(table)
    first = weights.target_dir(weights_dir)
    if first != report.weights_dir.absolute():
        _out().print(f"Note: jobs run here look in {first} first (it holds a manifest.json).", markup=False)
    if report.optional_missing:
        _out().print(f"Optional, not present: {', '.join(report.optional_missing)}.", markup=False)
    if report.required_missing:
        _out().print(f"Still missing for inference: {', '.join(report.required_missing)}. Import the rest of the "
                     "release (pretrains.zip and checkpoints.zip).", markup=False)


@weights_app.command("download")
def download_weights(
    repo: Annotated[str, typer.Option("--repo", help="Hugging Face repo id (owner/name) of converted weights, laid out "
                                                     "like a weights folder (no official repo exists).",
                                        show_default=False)],
    revision: Annotated[str, typer.Option("--revision", help="Full 40-character commit hash or a release tag "
                                                             "(branch names are refused).", show_default=False)],
    name: Annotated[Optional[List[str]], typer.Option("--name", help="Only these artefacts (repeatable).",
                                                      show_default=False)] = None,
    weights_dir: WeightsDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download converted weights from a pinned Hugging Face repo (the only command using the network).

    There is no official Hugging Face repo: the official project publishes pretrains.zip and
    checkpoints.zip (use `weights import`). This fetches a repo laid out like a weights folder, e.g. one
    you filled yourself: hmr.safetensors + hmr.json, generator_fashion_place.safetensors + .json,
    inpaintor_deepfillv2.safetensors + .json, smpl_faces.npy, mapper.txt, smpl_part_info.json,
    front_facial.json, head.json, and optionally manifest.json (sha256 values, then checked)."""
    from impersonator_cli.weights.download import download

    report = download(repo, revision, weights_dir, names=name or None)
    if json_out:
        _print_json(report.to_dict())
        return
    _out().print(f"Downloaded {len(report.downloaded)} files from {report.repo_id}@{report.commit} into "
                 f"{report.weights_dir}.", markup=False)
    if report.not_in_repo:
        _out().print(f"Not in the repo: {', '.join(report.not_in_repo)}.", markup=False)
