"""OutputLock: one run per output folder, across processes; a killed holder frees it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.lock import FALLBACK_NAME, LOCK_DIR, LOCK_NAME, LockHolder, OutputLock

REPO = Path(__file__).resolve().parents[1]

# A second process that takes the lock, says so, and waits to be killed. `fallback` makes
# it use the O_EXCL file, as on a file system without flock.
HOLDER = """
import errno, fcntl, sys, time
if sys.argv[2] == "fallback":
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    fcntl.flock = no_flock
from mrcnn_cli.lock import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    if sys.argv[3] == "wait":
        time.sleep(120)
print("released", flush=True)
"""


def start_holder(out: Path, mode: str = "flock", then: str = "wait") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), mode, then],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:  # only the processes this test started
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's lock calls behave as on a file system without flock support."""

    def refuse(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)


def in_use_message(out: Path, pid: int) -> str:
    return (
        f"output folder {out} is in use by another mrcnn run (pid {pid} on host "
        f"{socket.gethostname()} since "
    )


# --- flock ------------------------------------------------------------------------------


def test_the_lock_records_its_holder_and_is_released_on_exit(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out) as lock:
        assert lock.held
        record = json.loads((out / LOCK_DIR / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()
        assert record["host"] == socket.gethostname()
        assert record["started"]
        assert record["command"]
    assert not lock.held
    with OutputLock(out):  # free again
        pass


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    with OutputLock(tmp_path), pytest.raises(MrcnnError) as info:
        OutputLock(tmp_path).acquire()
    message = str(info.value)
    assert message.startswith(in_use_message(tmp_path, os.getpid()))
    assert message.endswith("); wait for it or choose another --out")
    assert "\n" not in message


def test_another_process_holding_the_folder_is_named(tmp_path, holders):
    holders.append(proc := start_holder(tmp_path))
    with pytest.raises(MrcnnError) as info:
        OutputLock(tmp_path).acquire()
    assert str(info.value).startswith(in_use_message(tmp_path, proc.pid))


def test_a_process_that_finished_has_released_the_folder(tmp_path, holders):
    holders.append(proc := start_holder(tmp_path, then="exit"))
    assert proc.stdout.readline() == "released\n"
    proc.wait()
    with OutputLock(tmp_path):
        pass


def test_a_holder_killed_with_sigkill_leaves_nothing_stale(tmp_path, holders):
    holders.append(proc := start_holder(tmp_path))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_DIR / LOCK_NAME).exists()  # the file stays; its flock went
    with OutputLock(tmp_path) as lock:
        assert lock.held
        record = json.loads((tmp_path / LOCK_DIR / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()


def test_our_lock_blocks_a_child_process(tmp_path, holders):
    with OutputLock(tmp_path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run(
            [sys.executable, "-c", HOLDER, str(tmp_path), "flock", "exit"],
            capture_output=True,
            text=True,
            env=env,
        )
    assert result.returncode != 0
    assert f"is in use by another mrcnn run (pid {os.getpid()} on host" in result.stderr


def test_release_twice_and_reacquire(tmp_path):
    lock = OutputLock(tmp_path)
    lock.acquire()
    with pytest.raises(RuntimeError):
        lock.acquire()
    lock.release()
    lock.release()
    lock.acquire()
    lock.release()


# --- what the lock refuses to touch ------------------------------------------------------


def test_a_symlink_planted_as_the_lock_file_is_not_followed(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (tmp_path / "out" / LOCK_DIR).mkdir(parents=True)
    (tmp_path / "out" / LOCK_DIR / LOCK_NAME).symlink_to(victim)
    with pytest.raises(MrcnnError, match="is a symbolic link; remove it"):
        OutputLock(tmp_path / "out").acquire()
    assert victim.read_text() == "keep me"


def test_a_fifo_as_the_lock_file_is_refused(tmp_path):
    (tmp_path / LOCK_DIR).mkdir()
    os.mkfifo(tmp_path / LOCK_DIR / LOCK_NAME)
    with pytest.raises(MrcnnError, match=r"not a regular file \(fifo\)"):
        OutputLock(tmp_path).acquire()


def test_an_output_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(MrcnnError, match="cannot lock output folder"):
        OutputLock(tmp_path / "out").acquire()


# --- without flock: the O_EXCL file ------------------------------------------------------


def test_without_flock_an_exclusive_file_is_used_and_removed(tmp_path, no_flock):
    with OutputLock(tmp_path):
        record = json.loads((tmp_path / LOCK_DIR / FALLBACK_NAME).read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(MrcnnError) as info:
            OutputLock(tmp_path).acquire()
        assert str(info.value).startswith(in_use_message(tmp_path, os.getpid()))
        assert f"delete {tmp_path / LOCK_DIR / FALLBACK_NAME}" in str(info.value)
    assert not (tmp_path / LOCK_DIR / FALLBACK_NAME).exists()


def test_without_flock_a_killed_holders_file_is_taken_over(tmp_path, holders, no_flock):
    holders.append(proc := start_holder(tmp_path, mode="fallback"))
    with pytest.raises(MrcnnError):  # alive: refused
        OutputLock(tmp_path).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = json.loads((tmp_path / LOCK_DIR / FALLBACK_NAME).read_text())
    assert stale["pid"] == proc.pid
    with OutputLock(tmp_path):  # the pid is gone on this host: taken over
        record = json.loads((tmp_path / LOCK_DIR / FALLBACK_NAME).read_text())
        assert record["pid"] == os.getpid()


def test_without_flock_a_file_from_another_host_is_not_taken_over(tmp_path, no_flock):
    (tmp_path / LOCK_DIR).mkdir()
    other = LockHolder(pid=1, host="elsewhere", started="2026-01-01T00:00:00+00:00", command="x")
    (tmp_path / LOCK_DIR / FALLBACK_NAME).write_bytes(other.to_bytes())
    with pytest.raises(MrcnnError) as info:
        OutputLock(tmp_path).acquire()
    assert "(pid 1 on host elsewhere since 2026-01-01T00:00:00+00:00)" in str(info.value)


def test_without_flock_an_unreadable_record_is_not_taken_over(tmp_path, no_flock):
    (tmp_path / LOCK_DIR).mkdir()
    (tmp_path / LOCK_DIR / FALLBACK_NAME).write_bytes(b"")
    with pytest.raises(MrcnnError, match=r"\(holder unknown\)"):
        OutputLock(tmp_path).acquire()


def test_other_flock_errors_are_a_clear_refusal(tmp_path, monkeypatch):
    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(MrcnnError, match="cannot lock output folder .*: input/output error"):
        OutputLock(tmp_path).acquire()
