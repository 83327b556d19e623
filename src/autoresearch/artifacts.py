"""Take what a run saved into a folder the harness made, regular files only, before any evaluator reads it."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


class Refused(Exception):
    """An artifact that is not a plain file the run finished writing: the run is invalid."""


def _copy_regular(src: Path, dest: Path) -> None:
    """Copy one file, refusing a symlink, a special file, a hard link and a file that changes while copied."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"{src.name} is a symlink (to {os.readlink(src)})")
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{src.name} is not a regular file")
    if st.st_nlink > 1:
        raise Refused(f"{src.name} is a hard link ({st.st_nlink} names), so something outside the folder can change it")
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO swapped in meanwhile does not block
    with os.fdopen(fd, "rb") as source, open(dest, "xb") as target:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"{src.name} is not a regular file")
        shutil.copyfileobj(source, target, 1 << 20)
        after = os.fstat(source.fileno())
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
        raise Refused(f"{src.name} was still being written after the run ended")


def _raise(error: OSError) -> None:
    raise error


def take_artifacts(folder: Path) -> None:
    """Replace `folder` (the run's artifacts) by a copy the harness made: regular files and folders only, so
    that nothing the run left (a link to swap, a process still writing) reaches the evaluator. Raises Refused."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise Refused(f"{folder.name} is a symlink or not a folder: not the folder the harness made")
    staging = folder.with_name(folder.name + ".taking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for top, dirs, names in os.walk(folder, onerror=_raise):
            here = Path(top)
            for name in dirs:
                if (here / name).is_symlink():
                    raise Refused(f"{name} is a symlink (to {os.readlink(here / name)})")
                (staging / (here / name).relative_to(folder)).mkdir()
            for name in names:
                _copy_regular(here / name, staging / (here / name).relative_to(folder))
    except (Refused, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise exc if isinstance(exc, Refused) else Refused(f"it could not be read ({exc})") from None
    left = folder.with_name(folder.name + ".left")
    shutil.rmtree(left, ignore_errors=True)
    os.rename(folder, left)
    os.rename(staging, folder)
    shutil.rmtree(left, ignore_errors=True)
