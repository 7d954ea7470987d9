"""Durable file writes: a reader sees a file whole or not at all, whatever stops the writer.

Every writer of the package (the results folder, the checkpoint, reports, sweeps) goes through
these few functions, so that what a crash, a kill or a full disk can leave behind is decided
in one place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fedhq_sim.errors import InputError


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """Replace ``path`` with the concatenated ``chunks`` in one rename; readers see the old or
    the new file, never a part (a large file is written without being held in memory)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; readers see the old or the new file."""
    atomic_write_chunks(path, [data])


def append_block(path: Path, block: bytes) -> None:
    """Append ``block`` with one ``write`` call and flush it to disk: a kill, which cannot cut
    a system call short on a local file, leaves the block whole or absent (and a resumed run
    cuts the file back to its checkpoint's length anyway)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(block)
        while view:  # a short write (a full disk) is finished, or raises, here
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate(path: Path, nbytes: int) -> None:
    """Cut an appended file back to what the checkpoint saw (a kill may have left a part of a
    later round's block behind it)."""
    if path.stat().st_size < nbytes:
        raise InputError(path, "", f"is shorter than the checkpoint recorded ({nbytes} bytes): the folder was changed")
    with path.open("r+b") as handle:
        handle.truncate(nbytes)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def prepare_output_dir(out: Path, *, overwrite: bool) -> Path:
    """Create ``out``; an existing non-empty folder is refused unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "", "the output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "", "the output folder exists and is not empty; choose another --out or pass --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(out, "", f"cannot create the output folder ({error.strerror})") from None
    return out
