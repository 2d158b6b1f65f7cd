"""One run at a time per output folder: two runs into one OUT would overwrite each other's slides.

The lock is an advisory ``flock`` on ``OUT/.bmengine.lock``, held for the whole run. The kernel
releases it when its process ends, however it ends (SIGKILL included), so a killed run never
leaves a lock that blocks the next one. The file also names its holder (host, pid, start, command)
so a refused run can say who is busy, and a run that takes over from a holder that did not finish
can say so.
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


class OutputLock:
    """``with OutputLock(out_dir) as lock:`` for the length of a run; ``lock.stale`` is the holder a
    killed or crashed run left behind (None when the last run finished cleanly or there was none)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_NAME
        self.fd: int | None = None
        self.stale: Holder | None = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = holder.describe() if holder else "another bmengine run"
            raise OutputBusyError(f"{self.path.parent}: another run is writing here: {who}. Wait for it, or "
                                  "choose another --out") from None
        self.fd = fd
        self.stale = _read_holder(fd)  # the file outlives a killed run; a clean run empties it
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # finished: nothing stale to report next time
        os.close(self.fd)  # releases the flock
        self.fd = None
