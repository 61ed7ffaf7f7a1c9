"""A job as plain data: which networks it needs and the API call that runs it.

The CLI builds one `JobSpec` per command line (or per manifest line of `impersonate batch`); a
`Worker` runs it, locally or in a Ray actor. Everything here pickles, so a spec can travel to
another process or machine; its paths are meant for storage every worker sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from impersonator_cli.defaults import DEFAULT_SIZE
from impersonator_cli.weights.registry import DEFAULT_GENERATOR

JOBS = ("imitate", "swap", "novelview")


@dataclass(frozen=True)
class StageKey:
    """The arguments of `Impersonator(...)`: jobs with equal keys share one set of loaded networks."""

    weights_dir: Optional[str] = None
    device: str = "auto"
    precision: str = "auto"
    generator: str = DEFAULT_GENERATOR
    size: int = DEFAULT_SIZE
    renderer: str = "auto"

    def load(self):
        from impersonator_cli.api import Impersonator

        return Impersonator(weights_dir=self.weights_dir, device=self.device, precision=self.precision,
                            generator=self.generator, size=self.size, renderer=self.renderer)


@dataclass(frozen=True)
class JobSpec:
    """One job: `kind` (imitate | swap | novelview), its stages, its output and the keyword arguments of
    the `Impersonator` method (output excluded). `index`: its manifest line (0 outside a batch)."""

    kind: str
    stages: StageKey
    output: Path
    call: dict = field(default_factory=dict)
    index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in JOBS:
            raise ValueError(f"unknown job kind {self.kind!r}")

    def overwriting(self) -> "JobSpec":
        """The same job, allowed to replace its output (`batch --redo`)."""
        return replace(self, call={**self.call, "overwrite": True})
