"""Input errors that end a command with one clear line and exit code 2.

Every problem with a user's file (scenario or profile) is raised as :class:`InputError`,
which carries the file, the key path inside it and what was expected. The CLI prints
``str(error)`` and exits 2; nothing else needs to know how to format input problems.
"""

from __future__ import annotations

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
        if self.key_path:
            return f"{where}: {self.key_path}: {self.problem}"
        return f"{where}: {self.problem}"


class SimulationError(Exception):
    """The simulation could not go on (not a problem of the input files)."""
