"""Run the `impersonate` CLI in this process, through its real entry point and error boundary.

`run_cli(capsys, *args)` calls `impersonator_cli.cli.main(argv)` (what the console script and
`python -m impersonator_cli` call), catches its SystemExit and returns the exit code with what it
wrote to stdout and stderr. Tests whose subject is the process itself (signals, a shell script, the
`python -m` entry) start a real subprocess instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(capsys, *args) -> CliResult:
    from impersonator_cli.cli import main

    capsys.readouterr()  # drop whatever the test printed before
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)
