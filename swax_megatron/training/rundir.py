"""One trainer per run directory: an exclusive lock, taken before anything in it is touched.

    lock = RunLock.acquire([run_dir, checkpoint_root])   # rank 0; RunDirError / RunBusyError
    ...
    lock.release()

The lock is `flock` on `<dir>/.lock`: the kernel drops it when the holding process ends, however
it ends (SIGKILL included), so a crashed trainer never leaves a stale lock behind, and no
time-out or pid check is involved. The file's text names the holder (host, pid, SLURM job, start
time) for the one-line error a second trainer gets. A checkpoint root outside the run directory
(`checkpoint.dir`) is locked too: two runs pointed at one checkpoint folder would otherwise
write over each other's `latest`.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path
from typing import List, Sequence

LOCK_FILE = ".lock"
NO_LOCK_ENV = "SWAX_NO_RUN_LOCK"  # file systems without flock: run unlocked, on the user's word


class RunDirError(ValueError):
    """The run directory cannot be created or written (one line, naming the path)."""


class RunBusyError(RunDirError):
    """Another trainer holds the run directory's lock."""


def _holder_text() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return (f"pid {os.getpid()} on {socket.gethostname()}"
            + (f", SLURM job {job}" if job else "")
            + f", since {datetime.datetime.now().isoformat(timespec='seconds')}")


def _make_dir(path: Path) -> bool:
    """Create `path` (and parents); True when it did not exist before."""
    if path.is_dir():
        return False
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        raise RunDirError(f"{path}: exists and is not a directory (check run.output_root / "
                          f"checkpoint.dir)") from None
    except NotADirectoryError:
        raise RunDirError(f"{path}: a parent of it is a file, not a directory (check "
                          f"run.output_root / checkpoint.dir)") from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot create the directory ({e.strerror})") from None


class RunLock:
    def __init__(self) -> None:
        self._held: List[tuple] = []  # (fd, lock path, directory created by us)

    @classmethod
    def acquire(cls, dirs: Sequence[Path]) -> "RunLock":
        lock = cls()
        try:
            for d in dict.fromkeys(Path(x).resolve() for x in dirs):  # once each, in order
                lock._lock_one(d)
        except BaseException:
            lock.release(remove_new=True)
            raise
        return lock

    def _lock_one(self, directory: Path) -> None:
        created = _make_dir(directory)
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"{directory}: cannot write in the run directory ({e.strerror})"
                              ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunBusyError(f"{directory}: another trainer is running on it ({holder}); "
                               f"wait for it to end or stop it first") from None
        except OSError as e:  # e.g. Lustre mounted without `-o flock`: ENOSYS
            os.close(fd)
            if os.environ.get(NO_LOCK_ENV) == "1":
                return
            raise RunDirError(f"{directory}: the file system cannot lock files ({e.strerror}); "
                              f"ask for `flock` support (Lustre: mount -o flock) or set "
                              f"{NO_LOCK_ENV}=1 and make sure yourself that one trainer runs "
                              f"per run directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
        self._held.append((fd, path, created))

    def release(self, remove_new: bool = False) -> None:
        """Unlock; with `remove_new`, also remove directories this lock created if nothing but
        the lock file is in them (a first attempt that failed its checks leaves nothing)."""
        for fd, path, created in reversed(self._held):
            if remove_new and created:
                try:
                    path.unlink()
                    path.parent.rmdir()
                except OSError:
                    pass  # something else is in it now: keep it
            os.close(fd)
        self._held.clear()
