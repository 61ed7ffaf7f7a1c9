"""`impersonate batch MANIFEST`: read a manifest of jobs, check every line with the job commands' own
parsers, then run them (impersonator_cli/batch).

A manifest is JSON Lines (one object per line; blank lines and lines starting with # are skipped) or
CSV with the same names as columns. Each job is `{"job": "imitate" | "swap" | "novelview", ...}`; its
other keys are the long option names of that job's command with `-` written `_`, plus `sources` (the
source files; one for swap and novelview), `driver`, `reference` and `output`. In CSV a list is
written with `;` between items, and an empty cell means the option's default. Relative paths are
relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Iterator, Optional

import click
import typer
from rich.console import Console

from impersonator_cli.cli.jobs import planning
from impersonator_cli.cli.options import JsonOpt, QuietOpt
from impersonator_cli.errors import ImpersonateError, UsageError

err = Console(stderr=True, highlight=False)
JOB_KINDS = ("imitate", "swap", "novelview")
PATH_KEYS = ("sources", "driver", "reference", "source_smpl", "reference_smpl", "audio_file", "weights_dir")
NOT_IN_MANIFEST = ("json_out", "quiet")  # the batch reports for its jobs
LIST_SEPARATOR = ";"  # between the items of a list in a CSV cell
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _bad(where: str, message: str, hint: str = "Fix that line: nothing has run.") -> UsageError:
    return UsageError(f"{where}: {message}", hint=hint)


# ------------------------------------------------------------------ reading


def read_manifest(path: Path) -> list[tuple[int, dict]]:
    """[(line number, job dict)] from a JSON Lines or CSV manifest."""
    if not path.is_file():
        raise UsageError("The manifest does not exist", path=path, hint="Check the path.")
    text = path.read_text(encoding="utf-8-sig")
    rows = list(_csv_rows(text) if path.suffix.lower() == ".csv" else _json_rows(text, path))
    if not rows:
        raise UsageError("The manifest holds no job", path=path, hint='Write one JSON object per line, e.g. '
                         '{"job": "imitate", "sources": ["me.png"], "driver": "dance.mp4", "output": "out.mp4"}.')
    return rows


def _json_rows(text: str, path: Path) -> Iterator[tuple[int, dict]]:
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            job = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _bad(f"{path.name} line {number}", f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(job, dict):
            raise _bad(f"{path.name} line {number}", "a job must be a JSON object ({...})")
        yield number, job


def _csv_rows(text: str) -> Iterator[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    for number, row in enumerate(reader, 2):  # line 1 holds the column names
        job = {k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip()}
        if job:
            yield number, job


# ------------------------------------------------------------------ one line -> argv -> JobSpec


def _truth(value, where: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _bad(where, f"key '{key}' takes true or false, not {value!r}")


def _items(value, param: click.Parameter, where: str, key: str) -> list:
    if isinstance(value, str) and param.multiple and LIST_SEPARATOR in value:
        value = [v.strip() for v in value.split(LIST_SEPARATOR) if v.strip()]
    items = value if isinstance(value, list) else [value]
    if len(items) != 1 and not param.multiple:
        raise _bad(where, f"key '{key}' takes one value, not {len(items)}")
    return items


def _resolve(key: str, value, base: Path):
    """Paths relative to the manifest's folder (a generator name stays a name unless such a file exists)."""
    def one(item):
        p = Path(str(item)).expanduser()
        if p.is_absolute():
            return str(p)
        if key == "generator" and not (base / p).exists():
            return str(item)
        return str(base / p)
    if key not in PATH_KEYS + ("output", "generator"):
        return value
    return [one(v) for v in value] if isinstance(value, list) else one(value)


def job_argv(command: click.Command, job: dict, where: str, base: Path) -> list[str]:
    """The command-line arguments of one manifest job (its keys checked against the command's options)."""
    params = {p.name: p for p in command.params}
    argv = []
    for key, value in job.items():
        if key == "job" or value is None:
            continue
        name = "source" if key == "sources" else key
        param = params.get(name)
        if param is None or name in NOT_IN_MANIFEST or key == "source":
            valid = sorted({"sources" if n == "source" else n for n in params} - set(NOT_IN_MANIFEST))
            raise _bad(where, f"unknown key '{key}' for {command.name}", hint=f"Use: job, {', '.join(valid)}.")
        value = _resolve(key, value, base)
        if key in PATH_KEYS:
            for item in value if isinstance(value, list) else [value]:
                if not Path(item).exists():
                    raise _bad(where, f"key '{key}': {item} does not exist", hint="Check the path (relative paths "
                               "start at the manifest's folder): nothing has run.")
        long = next(o for o in param.opts if o.startswith("--"))
        if getattr(param, "is_flag", False):
            on = _truth(value, where, key)
            argv += [long] if on else list(param.secondary_opts[:1])
            continue
        for item in _items(value, param, where, key):
            argv += [long, str(item)]
    return argv


def plan_job(root: click.Group, number: int, job: dict, manifest: Path):
    """The checked JobSpec of one manifest line (UsageError naming the line otherwise)."""
    where = f"{manifest.name} line {number}"
    kind = job.get("job")
    if kind not in JOB_KINDS:
        raise _bad(where, f"'job' must be one of {', '.join(JOB_KINDS)}, not {kind!r}")
    command = root.commands[kind]
    argv = job_argv(command, job, where, manifest.parent)
    output = Path(_resolve("output", job.get("output", ""), manifest.parent))
    if output.exists() and "--overwrite" not in argv:
        argv.append("--overwrite")  # an existing output is a finished job: plan it, the run skips it
    try:
        with command.make_context(kind, argv) as ctx, planning():
            spec = ctx.invoke(command.callback, **ctx.params)
    except click.ClickException as exc:
        raise _bad(where, exc.format_message()) from exc
    except ImpersonateError as exc:
        raise _bad(where, exc.paragraph()) from exc
    overwrite = _truth(job.get("overwrite", False), where, "overwrite")
    return dataclasses.replace(spec, call={**spec.call, "overwrite": overwrite}, index=number)


# ------------------------------------------------------------------ reporting


class _Report:
    """Batch events on stderr: bars on a terminal (jobs done, rate, ETA; the current job's frames),
    one line per finished job otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.done, self.total, self.ran = quiet, 0, 0, 0
        self.t0 = time.monotonic()
        self.live = not quiet and err.is_terminal
        self._bar = None

    def __enter__(self):
        if self.live:
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=err, transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def started(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._jobs = self._bar.add_task("jobs", total=total, rate="")
            self._job = self._bar.add_task("current job", total=None, rate="")

    def job_started(self, spec) -> None:
        if self._bar is not None:
            self._bar.reset(self._job, total=None, description=f"{spec.kind} line {spec.index}")

    def job_progress(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._job, completed=done, total=total)

    def job_ended(self, line: dict) -> None:
        self.done += 1
        if line["status"] != "skipped":
            self.ran += 1
        minutes = (time.monotonic() - self.t0) / 60
        rate = f"{self.ran / minutes:.1f} jobs/min" if self.ran and minutes > 0 else ""
        if self._bar is not None:
            self._bar.update(self._jobs, completed=self.done, rate=rate)
        if self.quiet or (self._bar is not None and line["status"] != "failed"):
            return
        text = f"[{self.done}/{self.total}] line {line['index']} {line['status']}: {line['output']}"
        text += f" ({rate})" if rate and line["status"] == "ok" else ""
        if line["error"]:
            text += f" ({line['error']['message']}; exit {line['error']['exit_code']})"
        (self._bar.console if self._bar is not None else err).print(text, markup=False, soft_wrap=True)


# ------------------------------------------------------------------ the command


def batch(
    ctx: typer.Context,
    manifest: Annotated[Path, typer.Argument(help="Jobs, one per line: JSON Lines (.jsonl) or CSV (.csv).", show_default=False)],
    results: Annotated[Optional[Path], typer.Option("--results", help="Append one JSON line per finished job here (default: MANIFEST.results.jsonl beside the manifest).", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes (default: one per CUDA device, else 1: this process).", show_default=False)] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Run on Ray: auto (join a running cluster, else start a local one) or a cluster address.", show_default=False)] = None,
    retries: Annotated[int, typer.Option("--retries", help="Re-runs of a job whose worker died.")] = 2,
    redo: Annotated[bool, typer.Option("--redo", help="Run every job again, replacing outputs that exist.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a manifest of jobs with the networks loaded once: each driver's motion is recovered once, finished
    jobs are skipped on a re-run, and --workers / --ray spread the jobs over processes, GPUs or machines."""
    from impersonator_cli.batch.core import BatchOptions
    from impersonator_cli.batch.run import default_workers, run_batch

    if workers is not None and workers < 1:
        raise UsageError(f"Invalid workers (--workers): it must be at least 1, but it is {workers}")
    if retries < 0:
        raise UsageError(f"Invalid retries (--retries): it must be 0 or more, but it is {retries}")
    root = ctx.find_root().command
    manifest = manifest.expanduser().resolve()  # jobs name absolute paths: they may run elsewhere
    specs = [plan_job(root, number, job, manifest) for number, job in read_manifest(manifest)]
    options = BatchOptions(results=results or manifest.with_name(manifest.stem + ".results.jsonl"), redo=redo,
                           workers=workers or default_workers(), ray=ray, retries=retries)
    with _Report(quiet) as events:
        summary = run_batch(specs, options, events)
    if json_out:
        print(json.dumps({**summary.to_dict(), "results": str(options.results)}))
    elif not quiet:
        done = summary.by_status
        err.print(f"{summary.total} jobs: {done['ok']} ok, {done['skipped']} skipped (done before), "
                  f"{done['failed']} failed, in {summary.seconds:.1f} s. Results: {options.results}",
                  markup=False, soft_wrap=True)
    if summary.exit_code:
        sys.exit(summary.exit_code)
