"""Files and stores written whole or not at all.

Everything the package writes goes first to a partial path beside the target: a name with
a random part (no other process, and no planted symlink, can be there before us), in the
target's directory (so that the final rename stays on one file system). Only a complete
result is renamed into place; until then the target, and whatever was there before, is
untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["claim", "partial_path", "partials_of", "release", "swap_in"]


def partial_path(path: Path) -> Path:
    """An unused partial path beside ``path``: ``.<name>.<random>.partial``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def claim(path: Path, *, folder: bool) -> None:
    """Create ``path`` (an empty folder, or an empty file) only if nothing is there, in one
    step: of two processes that start writing the same new path, one gets it and the other
    a :class:`FileExistsError`. For results written in place (so that an interrupted write
    can be resumed there) rather than swapped in."""
    try:
        if folder:
            os.mkdir(path)
        else:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o666))
    except FileExistsError as err:
        raise FileExistsError(
            f"{path} was created meanwhile (by another process?); nothing of ours was written "
            "there. Pass overwrite=True to replace it, or resume=True to complete it."
        ) from err


def release(path: Path) -> None:
    """Remove a :func:`claim`-ed ``path`` that is still empty (the write failed before it
    began); one with anything in it is left, to be resumed."""
    try:
        if path.is_dir() and not path.is_symlink():
            os.rmdir(path)  # only if empty
        elif path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def partials_of(path: Path) -> list[Path]:
    """Partial paths left beside ``path`` (by an interrupted write), newest first."""
    found = [p for p in path.parent.glob(f".{path.name}.*.partial") if not p.is_symlink()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def swap_in(partial: Path, path: Path, *, overwrite: bool) -> None:
    """Rename the complete ``partial`` to ``path``.

    Without ``overwrite``, a ``path`` that appeared meanwhile (another process) is never
    replaced: :class:`FileExistsError`, the partial left as it is. With it, the old
    ``path`` is moved aside first and removed only once the new one is in place.
    """
    if not overwrite:
        if partial.is_dir():
            if path.exists() or path.is_symlink():
                raise FileExistsError(f"{path} was created meanwhile; {partial} holds ours.")
            try:  # fails if a non-empty folder appeared since the check
                os.rename(partial, path)
            except OSError as err:
                raise FileExistsError(
                    f"{path} was created meanwhile; {partial} holds ours."
                ) from err
        else:
            os.link(partial, path)  # atomic, and fails if path exists
            os.unlink(partial)
        return
    if partial.is_dir() or path.is_dir():  # folders cannot be swapped in one step
        backup = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        if path.exists() or path.is_symlink():
            os.replace(path, backup)
        os.replace(partial, path)
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup)
        elif backup.exists() or backup.is_symlink():
            backup.unlink()
    else:
        os.replace(partial, path)
