"""Input errors that end a command with one clear line and exit code 2.

Every problem with a user's file (scenario or profile) is raised as :class:`InputError`,
which carries the file, the key path inside it and what was expected. The CLI prints
``str(error)`` and exits 2; nothing else needs to know how to format input problems.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path


class InputError(Exception):
    """A user's input file is wrong; the message names file, key path and expectation."""

    def __init__(self, file: Path | str | None, key_path: str, problem: str) -> None:
        self.file = str(file) if file is not None else None
        self.key_path = key_path
        self.problem = problem
        super().__init__(str(self))

    def __reduce__(self) -> tuple:
        """Rebuild from the three parts: a worker process's error reaches the CLI intact."""
        return (InputError, (self.file, self.key_path, self.problem))

    def __str__(self) -> str:
        where = self.file or "<input>"
        text = f"{where}: {self.key_path}: {self.problem}" if self.key_path else f"{where}: {self.problem}"
        return one_line(text)


def one_line(text: str) -> str:
    """``text`` with every character that could break or garble the line escaped: a file's
    keys and values reach the message, and a newline or a control byte in one would turn the
    one-line error into several (``str.splitlines`` splits at more than ``\\n``)."""
    return "".join(c.encode("unicode_escape").decode("ascii") if _breaks(c) else c for c in text)


def _breaks(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") or char == "\x85"


class SimulationError(Exception):
    """The simulation could not go on (not a problem of the input files)."""
