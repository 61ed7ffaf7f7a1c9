"""Typed errors. Each carries one actionable paragraph: what went wrong, which file, what to do.

The API raises these; only the CLI turns them into a message and an exit code.

Exit codes (documented in the README):
  1   internal error (a bug: please report it)
  2   bad usage (invalid option values or combinations)
  3   bad input (a missing, unreadable, corrupt or unsupported input file)
  4   missing or invalid weights
  5   output problem (exists without --overwrite, not writable)
  6   runtime environment problem (ffmpeg missing or failing, device unavailable)
  128+N interrupted by signal N, nothing left half-written: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP
"""

from __future__ import annotations

from os import PathLike


class ImpersonateError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1
    title = "Error"

    def __init_subclass__(cls, exit_code: int | None = None, title: str | None = None, **kw) -> None:
        """`class X(ImpersonateError, exit_code=N, title="..."):` sets a family's code and title."""
        super().__init_subclass__(**kw)
        cls.exit_code = cls.exit_code if exit_code is None else exit_code
        cls.title = cls.title if title is None else title

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike | None = None,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.message = message.rstrip()
        self.path = None if path is None else str(path)
        self.hint = hint
        self.detail = detail
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        """The one-paragraph message shown to the user (detail excluded)."""
        text = self.message
        if self.path is not None and self.path not in text:
            text = f"{text} [{self.path}]"
        if not text.endswith((".", "!", "?")):
            text += "."
        if self.hint:
            text = f"{text} {self.hint.rstrip()}"
        return text

    def to_dict(self) -> dict:
        """JSON-ready: the `error` object of `--json` output and of batch results."""
        return {"kind": type(self).__name__, "message": self.message, "hint": self.hint,
                "exit_code": self.exit_code, "path": self.path}

    def full_text(self) -> str:
        """Paragraph plus any tool output (e.g. the relevant part of ffmpeg's stderr)."""
        if not self.detail:
            return self.paragraph()
        return f"{self.paragraph()}\n{self.detail.rstrip()}"


class UsageError(ImpersonateError, exit_code=2, title="Usage error"):
    """Options that cannot work together or are out of range."""


class InputError(ImpersonateError, exit_code=3, title="Input error"):
    """An input file is missing, unreadable, corrupt or of the wrong kind."""


class VideoDecodeError(InputError):
    """ffmpeg could not read an input; `detail` holds the tail of its stderr."""


class WeightsError(ImpersonateError, exit_code=4, title="Weights error"):
    """A weight file is missing, corrupt, of the wrong format or fails verification."""


class OutputError(ImpersonateError, exit_code=5, title="Output error"):
    """An output cannot be written (exists without --overwrite, unwritable folder)."""


class EnvironmentProblem(ImpersonateError, exit_code=6, title="Environment error"):
    """The runtime environment lacks something (ffmpeg binary, CUDA device, optional backend)."""


class EncodeError(EnvironmentProblem):
    """ffmpeg failed while writing an output; `detail` holds the tail of its stderr."""


EXIT_INTERRUPTED = 130
BUG_HINT = "This is a bug in impersonate: report it with the output of `impersonate doctor`."


def internal_error(exc: BaseException) -> dict:
    """An unexpected exception as the `error` object of `--json` output and batch results (exit 1)."""
    return {"kind": "InternalError", "message": f"{type(exc).__name__}: {exc}", "hint": BUG_HINT,
            "exit_code": 1, "path": None}


def check_option(ok: bool, name: str, want: str, got: object, flag: str | None = None) -> None:
    """UsageError unless `ok`: the option `name` (an API argument; `flag`, by default `--name-with-dashes`,
    on the command line) must be `want`. Jobs check every option so before any weight or file is read."""
    if not ok:
        flag = flag or "--" + name.replace("_", "-")
        raise UsageError(f"Invalid {name} ({flag}): it must be {want}, but it is {got!r}",
                         hint=f"Change {flag} (or `{name}=` in the Python API).")


def stderr_tail(text: str | bytes | None, max_lines: int = 12, max_chars: int = 2000) -> str:
    """The last relevant lines of a tool's stderr, for inclusion in an error."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    tail = "\n".join(lines[-max_lines:])
    return tail[-max_chars:]
