"""`RUN_DIR/.lock`: one writer per run directory at a time.

`sweep` and `analyze` hold the lock while they write. The lock file holds the owner's pid,
host, process start time and command (JSON). It is created atomically: the content is
written to a temporary file which is then hard-linked to `.lock` (like O_CREAT|O_EXCL, the
link fails if `.lock` exists, and the lock is never seen half-written; where hard links are
not supported, O_CREAT|O_EXCL is used directly).

A second process that finds a live owner is refused with a message naming the owner's pid.
A stale lock (its pid no longer alive on this host, or alive but a different process
started since: pid reuse) is taken over with a warning: that is what lets `--resume`
continue a run killed with SIGKILL. A lock from another host is never taken over (its pid
cannot be checked from here): delete the file by hand if that host's process is gone.
The lock is removed when its owner exits the `with` block, however it exits.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time

from ensemble_jax import logs
from pathlib import Path
from typing import Callable, Iterator

LOCK_NAME = ".lock"


class RunLockedError(OSError):
    """The run directory is held by another live process (the message names its pid)."""


def _start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int, start: int | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        pass
    if start is not None:
        now = _start_ticks(pid)
        if now is not None and now != start:
            return False         # the pid was reused by a newer process
    return True


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _create(path: Path, text: str) -> bool:
    """Creates `path` holding `text` atomically; False if it already exists."""
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:          # no hard links here: exclusive create, then write
            try:
                fd2 = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd2, "w") as f:
                f.write(text)
            return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _describe(info: dict) -> str:
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
            f"({info.get('command', '?')}, since {when})")


def acquire(run_dir: str | os.PathLike, command: str,
            warn: Callable[[str], None] = logs.warning) -> Path:
    """Takes `run_dir/.lock` for this process; raises `RunLockedError` if a live process
    holds it. Returns the lock's path (pass it to `release`)."""
    run = Path(run_dir)
    path = run / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_ticks(os.getpid()),
          "command": command, "since": time.time()}
    text = json.dumps(me) + "\n"
    for _ in range(20):
        if _create(path, text):
            return path
        info = _read(path)
        if info is None:          # released meanwhile: try again
            continue
        pid = info.get("pid")
        if not isinstance(pid, int):
            # Unreadable lock (not written by us): refuse rather than guess.
            raise RunLockedError(
                f"{run}: run directory is locked by {path} with unreadable content; if no "
                f"sweep or analyze is running on it, delete {path}")
        if info.get("host") != me["host"]:
            raise RunLockedError(
                f"{run}: run directory is in use by {_describe(info)}; two sweeps or analyses "
                f"cannot write the same run directory at once. If that process is gone, "
                f"delete {path}")
        if _pid_alive(pid, info.get("start")):
            raise RunLockedError(
                f"{run}: run directory is in use by {_describe(info)}; two sweeps or analyses "
                f"cannot write the same run directory at once (wait for it, or stop pid "
                f"{pid}; lock file {path})")
        # Stale: move it aside, check that what moved is the stale lock, and retry.
        aside = run / f"{LOCK_NAME}.stale.{os.getpid()}"
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            continue
        moved = _read(aside)
        if moved is not None and moved.get("pid") != pid:
            # Another process took the stale lock over between our read and the move:
            # put its lock back and let the next round see it alive.
            with contextlib.suppress(OSError):
                os.link(aside, path)
        else:
            warn(f"warning: {run}: taking over a stale lock of {_describe(info)}: that "
                 f"process is no longer running (killed?)")
        with contextlib.suppress(OSError):
            os.unlink(aside)
    raise RunLockedError(f"{run}: could not take the lock {path} (contended); try again")


def release(path: Path) -> None:
    """Removes the lock if this process still owns it."""
    info = _read(path)
    if info and info.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike, command: str,
           warn: Callable[[str], None] = logs.warning) -> Iterator[Path]:
    """`with locked(run_dir, 'sweep'):` holds `run_dir/.lock` for the block."""
    path = acquire(run_dir, command, warn)
    try:
        yield path
    finally:
        release(path)
