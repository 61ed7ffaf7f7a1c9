"""Typer options declared once as `Annotated` aliases and reused by every command.

Flag names equal the Python API's keyword names (`--weights-dir` -> `weights_dir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto | cpu | cuda | cuda:N | mps. auto picks CUDA when available.",
        envvar="IMPERSONATE_DEVICE",
        rich_help_panel="Runtime",
    ),
]
WeightsDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--weights-dir",
        help="Folder with the weights (default: $IMPERSONATE_WEIGHTS_DIR, ./weights, then the Hugging Face cache).",
        rich_help_panel="Runtime",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path,
    typer.Option("--output", "-o", help="Output file.", rich_help_panel="Output"),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace the output if it exists.", rich_help_panel="Output"),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print a machine-readable JSON summary on stdout.", rich_help_panel="Output"),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.", rich_help_panel="Output"),
]
