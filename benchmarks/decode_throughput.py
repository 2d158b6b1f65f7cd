"""How fast does the engine's one DALI pipeline decode crops, on the host's threads and on a GPU?

Usage:
    python benchmarks/decode_throughput.py [--devices cpu,gpu] [--batch-sizes 64,256]
        [--threads 2] [--per-class 110] [--repeats 5] [--json OUT.json]

The crops are real PBC JPEGs (the first ``--per-class`` of each class, sorted). Each configuration
builds the engine's ``CropPipeline`` as ``bmengine run`` does for the shipped model (resize 144,
centre crop 128, ImageNet normalisation, the 144 px QC image), warms it up on two batches, then
times ``--repeats`` passes over every crop. On the GPU a pass ends with the device synchronised
(the network input stays on the GPU, as it does for TensorRT; the QC image is reduced there by the
Triton kernel where torch and Triton are installed, else copied to the host: the record says which).

Reported per device and batch size: median crops/s over the passes (and every pass), and per batch
size the GPU/CPU ratio measured in the same run. The record names the machine and the versions.
Timing is not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHIPPED = dict(resize=144, crop=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def real_crops(data: Path, per_class: int) -> list[bytes]:
    classes = sorted(p for p in (data / "pbc").iterdir() if p.is_dir())
    blobs = [f.read_bytes() for c in classes for f in sorted(c.glob("*.jpg"))[:per_class]]
    if not blobs:
        raise SystemExit(f"decode_throughput: no PBC crops under {data / 'pbc'}")
    return blobs


def synchronise(device: str):
    """A function that waits for the GPU's queued work (nothing to wait for on the CPU)."""
    if device == "cpu":
        return lambda: None
    from bmengine.engine.backends import cuda_runtime as cuda

    cudart = cuda.runtime()
    return lambda: cuda.check(cudart.cudaDeviceSynchronize())


def time_device(device: str, blobs: list[bytes], batch: int, threads: int, repeats: int) -> dict:
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    pipeline = CropPipeline(PipelineSpec(**SHIPPED, qc_output=True, device=device, batch_size=batch,
                                         num_threads=threads))
    batches = [blobs[i:i + batch] for i in range(0, len(blobs), batch)]
    wait = synchronise(device)
    qc_kind = None
    for chunk in batches[:2]:  # warm-up: pipeline build, nvJPEG and Triton compilation
        decoded = pipeline.decode(chunk)
        assert all(e is None for e in decoded.errors), decoded.errors
        qc_kind = type(decoded.qc).__name__
    wait()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in batches:
            pipeline.decode(chunk)
        wait()
        seconds.append(time.perf_counter() - start)
    rates = [len(blobs) / s for s in seconds]
    return {"device": device, "batch_size": batch, "threads": threads, "crops": len(blobs),
            "qc_on_the_host_as": qc_kind, "median_crops_per_s": statistics.median(rates),
            "crops_per_s": rates}


def versions() -> dict:
    import nvidia.dali

    from bmengine.engine.bench import machine_words

    record = {"machine": machine_words(), "dali": nvidia.dali.__version__}
    try:
        from bmengine.engine.backends import cuda_runtime as cuda

        record["gpu"] = {**cuda.device_identity(0), **cuda.versions()}
    except Exception as exc:  # no GPU or no cuda-python: the CPU rows still stand
        record["gpu"] = f"none ({type(exc).__name__}: {exc})"
    return record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,gpu")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--threads", type=int, default=2, help="DALI's host threads (both devices)")
    parser.add_argument("--per-class", type=int, default=110)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    devices = args.devices.split(",")
    if "gpu" in devices:
        from bmengine.engine.backends.devices import cuda_device_count

        if cuda_device_count() == 0:
            print("decode_throughput: --devices gpu needs a CUDA GPU; none is visible here", file=sys.stderr)
            raise SystemExit(2)
    blobs = real_crops(args.data, args.per_class)
    rows = [time_device(d, blobs, int(b), args.threads, args.repeats)
            for b in args.batch_sizes.split(",") for d in devices]
    by = {(r["device"], r["batch_size"]): r["median_crops_per_s"] for r in rows}
    ratios = {str(b): by[("gpu", b)] / by[("cpu", b)] for (d, b) in by if d == "gpu" and ("cpu", b) in by}
    result = {"command": "python benchmarks/decode_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **versions(), "rows": rows, "gpu_over_cpu": ratios}
    for r in rows:
        print(f"{r['device']:>4} batch {r['batch_size']:>4} threads {r['threads']:>2}: "
              f"{r['median_crops_per_s']:8.0f} crops/s (median of {len(r['crops_per_s'])}; QC as {r['qc_on_the_host_as']})")
    for b, ratio in ratios.items():
        print(f"gpu/cpu at batch {b}: {ratio:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
