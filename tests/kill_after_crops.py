"""Test-only launcher: ``python kill_after_crops.py N run ...`` runs ``bmengine run ...`` and SIGKILLs
itself, as a crash would, at the first moment when N crops are classified and at least one slide is
written (slides are written in a stage of their own, behind inference: without the second
condition the kill could come before any slide is finished).

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
        inner_crops, inner_finished = progress.crops_done, progress.slide_finished
        seen, written = [0], [0]

        def maybe_die() -> None:
            if seen[0] >= limit and written[0] >= 1:
                os.kill(os.getpid(), signal.SIGKILL)

        def crops_done(n: int) -> None:
            inner_crops(n)
            seen[0] += n
            maybe_die()

        def slide_finished(status) -> None:
            inner_finished(status)
            written[0] += status.status == "ok"
            maybe_die()

        progress.crops_done, progress.slide_finished = crops_done, slide_finished
        return engine(cfg, progress)

    run_module.run_engine = run_engine_then_die


if __name__ == "__main__":
    _arm(int(sys.argv[1]))
    sys.argv = ["bmengine", *sys.argv[2:]]
    main()
