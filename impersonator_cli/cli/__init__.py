"""The `impersonate` command line (a thin Typer layer over the Python API)."""

from impersonator_cli.cli.app import app, main

__all__ = ["app", "main"]
