"""Replacing a file atomically, for the files a user keeps (the data engine's SFT JSON, the
terminal chat's conversation): the new text goes to a temporary file in the same folder, is
flushed to disk, then renamed over the old one, so a kill or a crash at any point leaves the old
file or the new one, never a part of either. The session's state file has its own writer in the
core (csrc/ecso/session_state_file.hpp), with the same guarantee."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, TextIO, Union

__all__ = ["replace_text_file"]


def replace_text_file(path: Union[str, "os.PathLike[str]"], write: Callable[[TextIO], object]) -> None:
    """Calls `write(f)` on a temporary UTF-8 file next to `path`, then puts it in `path`'s place.
    The temporary file is removed on any failure (an OSError from a full disk included, raised
    as it came); the file is private to its owner (mode 0600), as what it holds may be."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
