"""One run at a time per output folder: two runs into one OUT would overwrite each other's slides.

The lock is an advisory ``flock`` on ``OUT/.bmengine.lock``, held for the whole run. The kernel
releases it when its process ends, however it ends (kill -9 included), so a killed run never
leaves a lock that blocks the next one. The file also names its holder (host, pid, start, command)
so a refused run can say who is busy, and a run that takes over from a holder that did not finish
can say so.

Shards (``--shard i/n``) share an OUT by design: each holds ``.bmengine.lock`` shared and its own
``.bmengine.lock.shard-i-of-n`` exclusively. So the n shards of one split run side by side, while a
whole run (or ``bmengine report``), the same shard twice, or a shard of another split is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".bmengine.lock"


class OutputBusyError(RuntimeError):
    """Another run holds this output folder."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started_at: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at} ({self.command})"


def _read_holder(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64 * 1024).decode("utf-8", "replace")
    try:
        data = json.loads(text)
        return Holder(str(data["host"]), int(data["pid"]), str(data["started_at"]), str(data["command"]))
    except (ValueError, KeyError, TypeError):
        return None


def _held_shard_locks(out_dir: Path) -> list[tuple[Path, Holder | None]]:
    """The shard lock files of ``out_dir`` that a live run holds now, with their holders."""
    held = []
    for path in sorted(out_dir.glob(LOCK_NAME + ".shard-*")):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append((path, _read_holder(fd)))
        finally:
            os.close(fd)
    return held


def _busy(out_dir: Path, who: str) -> OutputBusyError:
    return OutputBusyError(f"{out_dir}: another run is writing here: {who}. Wait for it, or choose another --out")


class OutputLock:
    """``with OutputLock(out_dir[, shard_name]) as lock:`` for the length of a run; ``lock.stale`` is
    the holder a killed run left behind (None when the last run finished cleanly or there was none)."""

    def __init__(self, out_dir: Path, shard_name: str | None = None):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / (f"{LOCK_NAME}.{shard_name}" if shard_name else LOCK_NAME)
        self.shard_name = shard_name
        self.fds: list[int] = []
        self.stale: Holder | None = None

    def _take(self, path: Path, mode: int) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            shards = _held_shard_locks(self.out_dir) if path.name == LOCK_NAME else []
            if shards:  # the main lock is held shared, by shards, each named in its own file
                names = "; ".join(f"{p.name.removeprefix(LOCK_NAME + '.')} ({h.describe() if h else '?'})"
                                  for p, h in shards)
                raise _busy(self.out_dir, f"shard runs {names}") from None
            raise _busy(self.out_dir, holder.describe() if holder else "another bmengine run") from None
        self.fds.append(fd)
        return fd

    def __enter__(self) -> "OutputLock":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.shard_name is None:
                fd = self._take(self.path, fcntl.LOCK_EX)
            else:
                self._take(self.out_dir / LOCK_NAME, fcntl.LOCK_SH)
                fd = self._take(self.path, fcntl.LOCK_EX)
                split = self.shard_name.rsplit("-of-", 1)[1]
                other = [p for p, _ in _held_shard_locks(self.out_dir) if not p.name.endswith(f"-of-{split}")]
                if other:
                    raise _busy(self.out_dir, f"shards of another split ({', '.join(p.name for p in other)}); "
                                "every shard of one OUT must use the same n")
        except OutputBusyError:
            self._release()
            raise
        self.stale = _read_holder(fd)  # the file outlives a killed run; a clean run empties it
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        return self

    def _release(self) -> None:
        for fd in reversed(self.fds):
            os.close(fd)  # releases its flock
        self.fds = []

    def __exit__(self, *exc) -> None:
        if self.fds:
            os.ftruncate(self.fds[-1], 0)  # finished: nothing stale to report next time
        self._release()
