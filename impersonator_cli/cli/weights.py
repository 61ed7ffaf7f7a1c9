"""`impersonate weights ...`: list, verify, import, download. Thin: parse, call the API, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer
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
    print(json.dumps(data, indent=2))


@weights_app.command("list")
def list_weights(
    weights_dir: WeightsDirOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Recompute sha256 against manifest.json (slow).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Every weight file: what it is for, whether it is here, and how to get it."""
    rows = weights.status(weights_dir, check=check)
    if json_out:
        _print_json([r.to_dict() for r in rows])
        return
    table = Table(title=f"Weights ({weights.target_dir(weights_dir)})", title_justify="left")
    for col in ("name", "role", "needed for", "state", "path / how to get it"):
        table.add_column(col, overflow="fold")
    for r in rows:
        optional_gone = r.state == "missing" and not r.required_for
        state = "not present" if optional_gone else r.state
        style = "yellow" if optional_gone else _STYLE.get(r.state, "")
        table.add_row(r.name, r.role, ", ".join(r.required_for) or "optional",
                      f"[{style}]{state}[/]", str(r.path) if r.path else r.how_to_get)
    _out().print(table)
    lacking = [r.name for r in rows if r.state == "missing" and r.required_for]
    if lacking:
        _out().print(f"Missing for inference: {', '.join(lacking)}. "
                     "Get them with `impersonate weights import pretrains.zip checkpoints.zip`.", markup=False)


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
    if report.optional_missing:
        _out().print(f"Optional, not present: {', '.join(report.optional_missing)}.", markup=False)
    if report.required_missing:
        _out().print(f"Still missing for inference: {', '.join(report.required_missing)}. Import the rest of the "
                     "release (pretrains.zip and checkpoints.zip).", markup=False)


@weights_app.command("download")
def download_weights(
    repo: Annotated[str, typer.Option("--repo", help="Hugging Face repo id (owner/name).", show_default=False)],
    revision: Annotated[str, typer.Option("--revision", help="Full 40-character commit hash or a release tag "
                                                             "(branch names are refused).", show_default=False)],
    name: Annotated[Optional[List[str]], typer.Option("--name", help="Only these artefacts (repeatable).",
                                                      show_default=False)] = None,
    weights_dir: WeightsDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download converted weights from a pinned Hugging Face repo (the only command using the network)."""
    from impersonator_cli.weights.download import download

    report = download(repo, revision, weights_dir, names=name or None)
    if json_out:
        _print_json(report.to_dict())
        return
    _out().print(f"Downloaded {len(report.downloaded)} files from {report.repo_id}@{report.commit} into "
                 f"{report.weights_dir}.", markup=False)
    if report.not_in_repo:
        _out().print(f"Not in the repo: {', '.join(report.not_in_repo)}.", markup=False)
