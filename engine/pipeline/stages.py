"""Overlap reading, decoding and inference: each stage runs ahead of the next by a bounded queue.

Reading runs ahead in the reader's thread (engine/pipeline/reader.py); decoding runs in a thread (DALI's own worker threads do the
work and release the GIL); inference runs in the caller's thread. Every wait has a timeout and a
failure in any stage reaches the caller, so a dead stage never hangs a run.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

_DONE = object()


@dataclass
class _Failure:
    error: BaseException


#: batches the decode thread may finish ahead of inference (the queue between them). A GPU backend
#: sizes its ring of input buffers from it: this many queued + one being staged + one being inferred.
DECODE_AHEAD = 2


def run_ahead(items: Iterable[Any], work: Callable[[Any], Any], depth: int = 2, timeout: float = 600.0) -> Iterator[Any]:
    """Yield ``work(item)`` for each item, computed in a background thread ``depth`` items ahead."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def producer() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                result = work(item)
                while not stop.is_set():
                    try:
                        out.put(result, timeout=0.5)
                        break
                    except queue.Full:
                        continue
            out.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            out.put(_Failure(exc))

    thread = threading.Thread(target=producer, name="bmengine-decode", daemon=True)
    thread.start()
    try:
        while True:
            try:
                result = out.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no batch from the decode stage within {timeout:.0f}s") from None
            if result is _DONE:
                return
            if isinstance(result, _Failure):
                raise result.error
            yield result
    finally:
        stop.set()
        thread.join(timeout=5)
