"""Per-GPU benchmark: what ``bmengine bench --model X.plan`` adds on a GPU machine.

For each batch size of a sweep (up to the plan's profile maximum), through the ``Engine`` that
``bmengine run`` sets up (nvJPEG decoding, the backend's ring):
- end-to-end crops/s of decode -> stage -> infer, one batch after another;
- per-batch latency percentiles (p50, p95, p99; host clock, decode to probabilities on the host),
  the decode stage's host time and the inference's device time (CUDA events around
  ``execute_async_v3``);
- GPU busy % and memory from NVML, sampled every 50 ms while the batches run;
- the TensorRT model-only ceiling: back-to-back executions on a batch already on the device,
  timed by CUDA events.
Then every GPU of the node through the runner (``--gpus all``): crops/s in all and per GPU.
The record names the GPU, its PCI bus id, the driver, CUDA and TensorRT versions.

GPU-only: it never ran on this project's machines (no GPU); checked against cuda-python 13
(``cudaEventCreate``/``cudaEventElapsedTime``/``cudaDeviceGetPCIBusId``, docstrings of the installed
cuda.bindings.runtime) and nvidia-ml-py (``nvmlDeviceGetHandleByPciBusId``,
``nvmlDeviceGetUtilizationRates(h).gpu``, ``nvmlDeviceGetMemoryInfo(h).used``).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_BATCH_SIZES = (64, 128, 256, 512)
MODEL_ONLY_BATCHES = 50


def gpu_identity(device_id: int = 0) -> dict:
    """GPU name, compute capability, PCI bus id, driver/CUDA/TensorRT versions."""
    from bmengine.engine.backends import cuda_runtime as cuda

    identity = {**cuda.device_identity(device_id), "pci_bus_id": cuda.pci_bus_id(device_id), **cuda.versions()}
    try:
        import tensorrt

        identity["tensorrt"] = tensorrt.__version__
    except ImportError:
        identity["tensorrt"] = None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            identity["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML missing or refused: the record says so, the bench goes on
        identity["driver"] = f"unknown ({type(exc).__name__}: {exc})"
    return identity


class GpuSampler:
    """NVML utilisation and memory of one GPU, sampled in a thread while the ``with`` body runs."""

    def __init__(self, pci_bus_id: str, period: float = 0.05):
        self.pci_bus_id, self.period = pci_bus_id, period
        self.busy: list[int] = []
        self.memory: list[int] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(self.pci_bus_id)
        except Exception as exc:
            self.error = f"NVML unavailable: {type(exc).__name__}: {exc}"
            return self

        def sample() -> None:
            while not self._stop.is_set():
                self.busy.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                self.memory.append(int(pynvml.nvmlDeviceGetMemoryInfo(handle).used))
                self._stop.wait(self.period)

        self._thread = threading.Thread(target=sample, name="bmengine-nvml", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            import pynvml

            pynvml.nvmlShutdown()

    def summary(self) -> dict:
        if not self.busy:
            return {"gpu_busy_mean_pct": None, "memory_used_max_mb": None, "nvml": self.error or "no samples"}
        return {"gpu_busy_mean_pct": round(statistics.fmean(self.busy), 1),
                "gpu_busy_p50_pct": statistics.median(self.busy),
                "memory_used_max_mb": max(self.memory) // 2**20, "samples": len(self.busy)}


def percentiles(ms: list[float]) -> dict:
    values = np.asarray(ms, dtype=np.float64)
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 3) for q in (50, 95, 99)}


@dataclass
class SweepRow:
    batch_size: int
    crops_per_second: float
    latency: dict
    decode_ms_median: float
    infer_device_ms_median: float | None
    model_only_crops_per_second: float
    gpu: dict = field(default_factory=dict)


def _batch_row(model: Path, crops: list[bytes], batch_size: int, repeats: int, pci_bus_id: str) -> SweepRow:
    from bmengine.engine.pipeline.engine import Engine, EngineSpec

    engine = Engine.load(EngineSpec(model, batch_size=batch_size, threads=4))
    try:
        backend, pipeline = engine.backend, engine.pipeline
        backend.timing = True
        batches = [crops[i : i + batch_size] for i in range(0, len(crops) - batch_size + 1, batch_size)]
        if not batches:
            raise ValueError(f"{len(crops)} crops are fewer than one batch of {batch_size}")

        def one(batch: list[bytes]) -> tuple[float, float, float | None]:
            t0 = time.perf_counter()
            decoded = pipeline.decode(batch)
            t1 = time.perf_counter()
            backend.infer(backend.stage(decoded.pixels))
            t2 = time.perf_counter()
            return (t2 - t0) * 1e3, (t1 - t0) * 1e3, backend.last_infer_ms

        for batch in batches[:2]:  # warm-up: pipeline build, TensorRT context, NVML
            one(batch)
        timings = []
        with GpuSampler(pci_bus_id) as sampler:
            t0 = time.perf_counter()
            for _ in range(repeats):
                timings += [one(batch) for batch in batches]
            seconds = time.perf_counter() - t0
        n_crops = repeats * len(batches) * batch_size
        model_ms = backend.time_model(batch_size, MODEL_ONLY_BATCHES)
        device = [d for _, _, d in timings if d is not None]
        return SweepRow(batch_size, round(n_crops / seconds, 1), percentiles([t for t, _, _ in timings]),
                        round(statistics.median(d for _, d, _ in timings), 3),
                        round(statistics.median(device), 3) if device else None,
                        round(MODEL_ONLY_BATCHES * batch_size / (model_ms / 1e3), 1), sampler.summary())
    finally:
        engine.close()


def _runner_row(slides_dir: Path, model: Path, batch_size: int, gpus: tuple[int, ...]) -> dict:
    """Every listed GPU through the runner, as `bmengine run --gpus` does it."""
    from bmengine.engine.pipeline.run import RunConfig, run_engine

    out = Path(tempfile.mkdtemp(prefix="bmengine-gpu-bench-"))
    try:
        result = run_engine(RunConfig(slides_dir, model, out, batch_size=batch_size, gpus=tuple(gpus)))
        rate = result.crops_per_second
        return {"gpus": list(gpus), "batch_size": batch_size, "crops_per_second": round(rate, 1),
                "crops_per_second_per_gpu": round(rate / len(gpus), 1)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def archive_crops(slides_dir: Path, n: int) -> list[bytes]:
    """``n`` encoded crops from the archive's stores, in store order, repeated if it holds fewer."""
    from bmengine.engine.store import SlideStore, find_slide_stores

    crops: list[bytes] = []
    for path in find_slide_stores(slides_dir):
        store = SlideStore.open(path)
        crops += [c for c in store.read_crops(0, min(store.n_cells, n - len(crops))) if c is not None]
        if len(crops) >= n:
            break
    if not crops:
        raise ValueError(f"{slides_dir}: no readable crops to benchmark with")
    return (crops * (n // len(crops) + 1))[:n]


def gpu_bench(slides_dir: Path, model: Path, crops: list[bytes], batch_sizes=DEFAULT_BATCH_SIZES,
              repeats: int = 3, gpus: tuple[int, ...] = (), device_id: int = 0) -> dict:
    """The per-GPU record: identity, the batch-size sweep, and the node through the runner."""
    from bmengine.engine.backends import cuda_runtime as cuda
    from bmengine.engine.model.card import load_card

    identity = gpu_identity(device_id)
    tensorrt = load_card(model).architecture.get("tensorrt") or {}
    profile_max = int(tensorrt.get("max_batch") or max(batch_sizes))
    sizes = [b for b in batch_sizes if b <= profile_max] or [profile_max]
    rows = [_batch_row(model, crops, b, repeats, identity["pci_bus_id"]) for b in sizes]
    best = max(rows, key=lambda row: row.crops_per_second)
    n_gpus = int(cuda.check(cuda.runtime().cudaGetDeviceCount()))
    node = _runner_row(slides_dir, model, best.batch_size, tuple(gpus) or tuple(range(n_gpus)))
    return {"gpu": identity, "sweep": [row.__dict__ for row in rows], "best_batch_size": best.batch_size,
            "node": node, "profile_max_batch": profile_max}
