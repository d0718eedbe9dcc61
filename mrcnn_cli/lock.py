"""One run at a time per output folder.

Two runs writing into one folder would interleave their outputs, journal and summary, so
a run holds `OutputLock(out_dir)` for its whole duration:

    with OutputLock(cfg.out):
        ...  # the run

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on `<out>/.mrcnn/lock`, a file that also
records the holder (pid, host name, command line, start time) for the message the next
run gets. The kernel drops a flock when its holder exits or is killed, so a lock never
outlives its run and there is nothing stale to clean up; the file itself stays (deleting
it would let a third run lock a new file while a second still waits on the old one).

Where the file system refuses flock (ENOLCK from an NFS mount without a lock daemon,
EOPNOTSUPP, ENOSYS), the fallback is an exclusively created `<out>/.mrcnn/lock.excl`,
removed at the end of the run. A run killed before it could remove it leaves it behind:
if it names a process on this host that is gone, the next run takes it over; if it names
another host, or cannot be read, the next run refuses and says which file to delete. (Two
runs that take over one stale file at the same instant could both start: a window of
microseconds that only this fallback has.)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import stat
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.names import display_name, file_type_name, not_regular_reason, os_error_reason

LOCK_DIR = ".mrcnn"
LOCK_NAME = "lock"
FALLBACK_NAME = "lock.excl"
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class LockHolder:
    """Who holds an output folder, as written into the lock file."""

    pid: int
    host: str
    started: str
    command: str

    @classmethod
    def this_process(cls) -> LockHolder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.now().astimezone().isoformat(timespec="seconds"),
            command=display_name(shlex.join(sys.argv)),
        )

    @classmethod
    def parse(cls, data: bytes) -> LockHolder | None:
        """The holder recorded in `data`; None if it is empty or not ours."""
        try:
            fields = json.loads(data.decode("utf-8"))
            pid, host = int(fields["pid"]), str(fields["host"])
            return cls(pid, host, str(fields["started"]), str(fields["command"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode("utf-8")

    def describe(self) -> str:
        return f"pid {self.pid} on host {display_name(self.host)} since {self.started}"

    def is_gone(self) -> bool:
        """Whether this holder is a process on this host that no longer exists."""
        if self.host != socket.gethostname():
            return False  # cannot tell from here
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


class OutputLock:
    """An exclusive lock on an output folder for the duration of a run (a context manager).

    `acquire` raises `MrcnnError` if another run holds the folder, naming that run.
    """

    def __init__(self, out_dir: Path | str, name: str = LOCK_NAME) -> None:
        """`name` picks the lock file: shards of one job writing into one folder each
        take their own (`lock-shard-0-of-4`), an unsharded run takes `lock`."""
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_DIR / name
        self.fallback_path = self.out_dir / LOCK_DIR / (FALLBACK_NAME if name == LOCK_NAME
                                                        else f"{name}.excl")  # fmt: skip
        self._fd: int | None = None  # the flocked file, while held
        self._fallback_ino: int | None = None  # the exclusive file, while held instead

    @property
    def held(self) -> bool:
        return self._fd is not None or self._fallback_ino is not None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        if self.held:
            raise RuntimeError(f"{self.out_dir} is already locked by this OutputLock")
        self._make_lock_dir()
        fd = self._open(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = LockHolder.parse(_read_all(fd))
            os.close(fd)
            raise MrcnnError(self._in_use(holder)) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                self._acquire_fallback()
                return
            raise MrcnnError(self._cannot_lock(exc)) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, LockHolder.this_process().to_bytes(), 0)
        except OSError as exc:
            os.close(fd)
            raise MrcnnError(self._cannot_lock(exc)) from exc
        self._fd = fd

    def release(self) -> None:
        """Give the folder back (closing the file drops the flock). Safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if self._fallback_ino is not None:
            ino, self._fallback_ino = self._fallback_ino, None
            _unlink_if_same(self.fallback_path, ino)

    # --- the O_EXCL fallback -----------------------------------------------------------

    def _acquire_fallback(self) -> None:
        for _ in range(2):  # a second try after removing a stale file
            try:
                fd = self._open(self.fallback_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                holder, ino = self._read_fallback()
                if ino is None:  # released meanwhile: try again
                    continue
                if holder is None or not holder.is_gone():
                    raise MrcnnError(self._in_use(holder, stale_file=True)) from None
                _unlink_if_same(self.fallback_path, ino)
                continue
            try:
                os.write(fd, LockHolder.this_process().to_bytes())
                self._fallback_ino = os.fstat(fd).st_ino
            except OSError as exc:
                os.close(fd)
                os.unlink(self.fallback_path)
                raise MrcnnError(self._cannot_lock(exc)) from exc
            os.close(fd)
            return
        raise MrcnnError(self._in_use(None, stale_file=True))

    def _read_fallback(self) -> tuple[LockHolder | None, int | None]:
        try:
            fd = self._open(self.fallback_path, os.O_RDONLY)
        except FileNotFoundError:
            return None, None  # just released: the next try will create it
        try:
            return LockHolder.parse(_read_all(fd)), os.fstat(fd).st_ino
        finally:
            os.close(fd)

    # --- helpers -------------------------------------------------------------------------

    def _make_lock_dir(self) -> None:
        lock_dir = self.out_dir / LOCK_DIR
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            st = os.lstat(lock_dir)
        except OSError as exc:
            raise MrcnnError(self._cannot_lock(exc)) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise MrcnnError(
                f"cannot lock output folder {display_name(self.out_dir)}: "
                f"{display_name(lock_dir)} is not a folder ({file_type_name(st.st_mode)})"
            )

    def _open(self, path: Path, flags: int) -> int:
        """Open a lock file that must be a regular file, never following a link."""
        try:
            fd = os.open(path, flags | _OPEN_FLAGS, 0o644)
        except FileExistsError:
            raise  # the fallback's O_EXCL: handled there
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise MrcnnError(
                    f"cannot lock output folder {display_name(self.out_dir)}: "
                    f"{display_name(path)} is a symbolic link; remove it"
                ) from exc
            raise MrcnnError(self._cannot_lock(exc)) from exc
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise MrcnnError(
                f"cannot lock output folder {display_name(self.out_dir)}: "
                f"{display_name(path)} {not_regular_reason(mode)}"
            )
        return fd

    def _in_use(self, holder: LockHolder | None, stale_file: bool = False) -> str:
        who = holder.describe() if holder is not None else "holder unknown"
        message = (
            f"output folder {display_name(self.out_dir)} is in use by another mrcnn run "
            f"({who}); wait for it or choose another --out"
        )
        if stale_file:  # no flock here: a killed run's file stays until someone removes it
            message += f" (if no run is using it, delete {display_name(self.fallback_path)})"
        return message

    def _cannot_lock(self, exc: OSError) -> str:
        return f"cannot lock output folder {display_name(self.out_dir)}: {os_error_reason(exc)}"


def _read_all(fd: int, limit: int = 64 * 1024) -> bytes:
    try:
        return os.pread(fd, limit, 0)
    except OSError:
        return b""


def _unlink_if_same(path: Path, ino: int | None) -> None:
    """Remove `path` only if it is still the file we looked at (not a newer run's)."""
    try:
        if ino is not None and os.lstat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass
