"""Files Grace keeps on disk: readable and writable by their owner only, whatever the umask.

The data directory is 0700 and what Grace writes there (the SQLite database and its WAL and shared
memory files, the master key file, the audit anchor and its lock) is 0600: created so (``os.open``
with mode 0600 can only lose bits to the umask, never gain them) and put back so at every start, in
case an earlier version, a restore or a hand-made copy left them readable by others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "private_dir", "private_file", "private_tree", "write_private"]

log = logging.getLogger("grace.storage")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) if needed, and leave it 0700.

    Raises OSError if it cannot be created; a mode that cannot be changed is logged.
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _set_mode(path, PRIVATE_DIR_MODE)


def private_file(path: Path, *, create: bool = True) -> None:
    """Leave ``path`` 0600; create it empty first if it does not exist (unless not ``create``)."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    elif not path.is_file():
        return
    _set_mode(path, PRIVATE_FILE_MODE)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, a new file created 0600 (replacing any file there)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def private_tree(directory: Path) -> None:
    """Create ``directory`` if needed; leave it 0700 and the regular files directly in it 0600."""
    private_dir(directory)
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            _set_mode(entry, PRIVATE_FILE_MODE)


def _set_mode(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current != mode:
            os.chmod(path, mode)
            log.warning("storage.mode_fixed", extra={"path": str(path), "was": f"{current:o}", "now": f"{mode:o}"})
    except OSError as exc:
        log.warning("storage.mode_not_fixed", extra={"path": str(path), "reason": exc.strerror or type(exc).__name__})
