"""The `impersonate` command line: parse, call the Python API, report. Nothing else lives here."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console

from impersonator_cli.cli.interrupts import (
    Interrupts,
    interrupt_handlers,
    interrupted_line,
)
from impersonator_cli.cli.interrupts import exit_code as interrupted_exit_code
from impersonator_cli.cli.options import JsonOpt, VerboseOpt, WeightsDirOpt
from impersonator_cli.errors import (
    EXIT_INTERRUPTED,
    EncodeError,
    ImpersonateError,
    VideoDecodeError,
    internal_error,
)
from impersonator_cli.io.publish import publish_mark, published_since
from impersonator_cli.version import __version__

app = typer.Typer(
    name="impersonate",
    help="Liquid Warping GAN: motion imitation, appearance transfer and novel view synthesis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True, highlight=False)
# Newer Typer releases vendor click, so its exception base is found through a public class.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"impersonate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", envvar="IMPERSONATE_DEBUG")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    _STATE["debug"] = debug


@app.command()
def doctor(weights_dir: WeightsDirOpt = None, json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Check Python, torch, devices, ffmpeg, renderer backends and weights: run this first when something is wrong.

    A few lines and a verdict (--verbose: every check; --json: the whole report). Exits 0 whatever it finds."""
    from impersonator_cli.cli.doctor import collect_report, render_report

    report = collect_report(weights_dir=weights_dir)
    if json_out:
        print(json.dumps(report))
    else:
        render_report(report, Console(), verbose=verbose, weights_dir=weights_dir)


def _register_subapps() -> None:
    from impersonator_cli.cli import jobs as cli_jobs
    from impersonator_cli.cli.motion import motion_app
    from impersonator_cli.cli.weights import weights_app

    for command in (cli_jobs.imitate, cli_jobs.swap, cli_jobs.novelview, cli_jobs.demo):
        app.command(rich_help_panel="Jobs")(command)
    app.command()(cli_jobs.bench)
    from impersonator_cli.cli.batch import batch

    app.command(rich_help_panel="Jobs")(batch)
    from impersonator_cli.cli import train as cli_train

    app.command(rich_help_panel="Training", add_help_option=False,
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(cli_train.train)
    app.command(rich_help_panel="Training")(cli_train.evaluate)
    app.add_typer(motion_app, name="motion")
    app.add_typer(weights_app, name="weights")


_register_subapps()


def _report(error: ImpersonateError, debug: bool) -> None:
    """One paragraph. The tool output behind it (`detail`, e.g. ffmpeg's stderr) only under --debug;
    without it, the paragraph ends by saying that --debug shows it."""
    err_console.print(f"[bold red]{error.title}:[/] ", end="")
    if debug or not error.detail:
        err_console.print(error.full_text() if debug else error.paragraph(), markup=False, soft_wrap=True)
        return
    ffmpeg = isinstance(error, (EncodeError, VideoDecodeError)) or "ffmpeg" in error.paragraph()
    hint = f"Run again with --debug to see {'ffmpeg' if ffmpeg else 'the tool'}'s output."
    err_console.print(f"{error.paragraph()} {hint}", markup=False, soft_wrap=True)


def _internal_error(exc: Exception) -> dict:
    err_console.print(
        f"Internal error: {type(exc).__name__}: {exc}. This is a bug in impersonate: run the command again "
        "with --debug for the traceback and report it together with the output of `impersonate doctor`.",
        markup=False,
        soft_wrap=True,
    )
    return internal_error(exc)


def _usage_error(exc) -> dict:
    return {"kind": "UsageError", "message": exc.format_message(), "hint": "See --help.",
            "exit_code": exc.exit_code, "path": None}


def _run(argv: list[str] | None, debug: bool, signals: Interrupts) -> tuple[int, dict | None]:
    """Run the app and report a failure on stderr; -> (exit code, the error as data or None).
    EXIT_INTERRUPTED stands for any interruption."""
    try:
        code = app(args=argv, standalone_mode=False)  # Typer turns Ctrl-C into Exit(130), returned
        return (code if isinstance(code, int) else 0), None
    except typer.Exit as exc:
        return exc.exit_code, None
    except (typer.Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED, None
    except _ClickException as exc:
        exc.show()
        return exc.exit_code, _usage_error(exc)
    except BrokenPipeError:
        return 1, None
    except Exception as exc:
        if signals.received:  # a failure the signal caused (ffmpeg stopped by the same SIGTERM)
            return EXIT_INTERRUPTED, None
        if isinstance(exc, ImpersonateError):
            _report(exc, debug)
            if debug:
                raise
            return exc.exit_code, exc.to_dict()
        if debug:
            raise
        return 1, _internal_error(exc)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the single error boundary of the CLI. SIGINT, SIGTERM and SIGHUP
    stop a job cleanly (cli/interrupts.py) and exit with 128 + the signal's number. With --json, a
    failure is also one line on stdout: {"error": {"kind", "message", "hint", "exit_code", "path"}}."""
    args = argv if argv is not None else sys.argv[1:]
    debug = "--debug" in args or os.environ.get("IMPERSONATE_DEBUG") == "1"
    signals, mark = Interrupts(), publish_mark()
    error = None
    try:
        with interrupt_handlers(signals):
            code, error = _run(argv, debug, signals)
    except KeyboardInterrupt:  # a signal while the handlers were being installed
        code = EXIT_INTERRUPTED
    if signals.received or code == EXIT_INTERRUPTED:
        signum = signals.signum or signal.SIGINT
        line = interrupted_line(signum, published_since(mark))
        err_console.print(line, markup=False, soft_wrap=True)
        code = interrupted_exit_code(signum)
        error = {"kind": "Interrupted", "message": line, "hint": None, "exit_code": code, "path": None}
    if code and error is not None and "--json" in args:
        print(json.dumps({"error": error}), flush=True)
    if code:
        sys.exit(code)
