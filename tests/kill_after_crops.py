"""Test-only launcher: ``python kill_after_crops.py N run ...`` runs ``bmengine run ...`` and SIGKILLs
itself once N crops are classified, as a crash would.

The fault injection lives here, in the tests, and not in the product: no environment variable left
exported in a user's shell can make a real run die.
"""

from __future__ import annotations

import os
import signal
import sys

from bmengine.engine.cli.app import main
from bmengine.engine.pipeline import run as run_module


def _arm(limit: int) -> None:
    engine = run_module.run_engine

    def run_engine_then_die(cfg, progress=None):
        inner = progress.crops_done
        seen = [0]

        def crops_done(n: int) -> None:
            inner(n)
            seen[0] += n
            if seen[0] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)

        progress.crops_done = crops_done
        return engine(cfg, progress)

    run_module.run_engine = run_engine_then_die


if __name__ == "__main__":
    _arm(int(sys.argv[1]))
    sys.argv = ["bmengine", *sys.argv[2:]]
    main()
