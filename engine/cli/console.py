"""What the commands print, and where third-party noise goes instead.

Text that comes from data (slide ids, file names, error messages, ``[gpu]`` in a hint) must never
be read as Rich markup: a ``[/]`` in a slide id used to kill a whole run. Everything from outside
goes through :func:`esc`. DALI writes to file descriptor 2 from C++ and Dask logs tracebacks and
"Future exception was never retrieved" at exit; during a run both go to ``OUT/bmengine.log`` and
the console keeps only what bmengine says.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from rich.markup import escape

LOG_NAME = "bmengine.log"
_NOISY_LOGGERS = ("distributed", "asyncio", "tornado", "dask", "bokeh")


def esc(value: object) -> str:
    """Any value as literal console text (never markup)."""
    return escape(str(value))


def writable_dir_problem(path: Path, what: str = "output folder") -> str | None:
    """Why ``path`` cannot be used as an output folder, or None; creates it when it can."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{what} {path} is a file, not a folder"
    except NotADirectoryError:
        return f"{what} {path} cannot be created: a part of its path is a file, not a folder"
    except OSError as exc:
        return f"{what} {path} cannot be created: {exc.strerror or exc}"
    if not path.is_dir():
        return f"{what} {path} is not a folder"
    probe = path / f".bmengine-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"{what} {path} is not writable: {exc.strerror or exc}"
    return None


def route_noise_to_log(log_path: Path) -> TextIO:
    """Send file descriptor 2 and the noisy libraries' loggers to ``log_path``; return a stream on the
    real stderr for the console. Not undone: noise at interpreter exit must land in the log too."""
    log_path = Path(log_path)
    real_fd = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stderr.flush()
    os.dup2(log_fd, 2)
    os.close(log_fd)
    handler = logging.StreamHandler(open(log_path, "a", encoding="utf-8", buffering=1))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):  # distributed installs a stderr handler at import
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
    import warnings

    warnings.simplefilter("ignore")  # Python warnings (zarr, dask) are for developers; fd 2 is the log anyway
    return os.fdopen(real_fd, "w", buffering=1, encoding="utf-8", errors="replace")
