"""The `impersonate` command line: parse, call the Python API, report. Nothing else lives here."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from impersonator_cli.version import __version__
from impersonator_cli.errors import EXIT_INTERRUPTED, ImpersonateError
from impersonator_cli.cli.options import JsonOpt, WeightsDirOpt

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
def doctor(weights_dir: WeightsDirOpt = None, json_out: JsonOpt = False) -> None:
    """Check Python, torch, devices, ffmpeg, renderer backends and weights: run this first when something is wrong."""
    from impersonator_cli.cli.doctor import collect_report, render_report

    report = collect_report(weights_dir=weights_dir)
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        render_report(report, Console())


def _register_subapps() -> None:
    from impersonator_cli.cli import jobs as cli_jobs
    from impersonator_cli.cli.motion import motion_app
    from impersonator_cli.cli.weights import weights_app

    for command in (cli_jobs.imitate, cli_jobs.swap, cli_jobs.novelview, cli_jobs.demo):
        app.command(rich_help_panel="Jobs")(command)
    app.command()(cli_jobs.bench)
    from impersonator_cli.cli import train as cli_train

    app.command(rich_help_panel="Training", add_help_option=False,
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(cli_train.train)
    app.command(rich_help_panel="Training")(cli_train.evaluate)
    app.add_typer(motion_app, name="motion")
    app.add_typer(weights_app, name="weights")


_register_subapps()


def _report(error: ImpersonateError) -> None:
    err_console.print(f"[bold red]{error.title}:[/] ", end="")
    err_console.print(error.full_text(), markup=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the single error boundary of the CLI."""
    debug = "--debug" in (argv if argv is not None else sys.argv) or os.environ.get("IMPERSONATE_DEBUG") == "1"
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("Interrupted.")
        sys.exit(EXIT_INTERRUPTED)
    except _ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("Interrupted: no output was written.")
        sys.exit(EXIT_INTERRUPTED)
    except ImpersonateError as exc:
        if debug:
            raise
        _report(exc)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        err_console.print(
            f"Internal error: {type(exc).__name__}: {exc}. This is a bug in impersonate: run the command again "
            "with --debug for the traceback and report it together with the output of `impersonate doctor`.",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(1)
