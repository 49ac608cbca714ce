"""Write-then-rename: a reader never sees a half-written file, a kill never leaves one, and
concurrent writers of the same content (several ranks filling one cache) cannot corrupt each
other. The one home of atomic file writing; imports nothing of the package.

    atomic_write("run/summary.json", text)           # str or bytes
    with atomic_path("cache/x.bin") as tmp: ...      # write tmp; renamed onto the final path
    with atomic_directory("hf/export") as tmp: ...   # a whole directory, the same way
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union


def temp_beside(final: Union[str, os.PathLike]) -> Path:
    """A new empty temporary file in `final`'s directory (same file system: rename is atomic),
    with the permissions a plain open() would give (mkstemp makes 0600; results and caches are
    read by other users and ranks as the umask allows)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(final: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed onto `final`."""
    tmp = temp_beside(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(final: Union[str, os.PathLike], data: Union[str, bytes]) -> Path:
    """Write `data` (text as UTF-8) to `final` through a temporary file, fsync'ed before the
    rename so a crash right after cannot leave an empty file under the final name."""
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return Path(final)


@contextlib.contextmanager
def atomic_directory(final: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a hidden temporary directory beside `final` (which must not exist: FileExistsError);
    renamed onto it when the body succeeds, removed when it fails, so a half-written directory
    never looks complete. Files get the permissions the umask allows (mkdtemp makes 0700)."""
    final = Path(final)
    if final.exists() or final.is_symlink():
        raise FileExistsError(f"{final}: already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for path in [tmp, *tmp.rglob("*")]:
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if final.exists() or final.is_symlink():
            raise FileExistsError(f"{final}: appeared while it was being written; discarded")
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
