"""One DALI pipeline definition for crops: decode -> resize -> centre crop -> normalise.

The device is a parameter: ``"cpu"`` decodes on host threads (this machine), ``"gpu"`` decodes
with nvJPEG ("mixed") and resizes/normalises on the GPU, leaving the batch in device memory for
TensorRT. The trainer uses the same definition (``normalize=False``) to build its image cache,
so training and inference see identical resampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import numpy as np

from bmengine.engine.store.image_header import jpeg_is_cut_short
from bmengine.engine.store.limits import InputLimits

Device = Literal["cpu", "gpu"]
# The QC checks (engine/qc) were tuned on 144 px images; below 128 px they lose damage (see
# benchmarks/results/qc-damaged-jpeg-corpus.md), so the QC image has its own fixed size.
QC_SIZE = 144
TRUNCATED_JPEG = "JPEG truncated (no end-of-image marker)"


@dataclass(frozen=True)
class PipelineSpec:
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalize: bool = True  # False: uint8 HWC after the crop (trainer's cache)
    qc_output: bool = False  # also return a resized, uncropped uint8 image for quality checks
    qc_size: int = QC_SIZE  # the QC image's side, whatever the model's input (the checks are tuned at it)
    hue_range: tuple[float, float] | None = None  # Wang et al.'s hue mapping, degrees; None = off

    @classmethod
    def from_preprocessing(cls, prep, **kwargs) -> "PipelineSpec":
        """The spec a model card's preprocessing record asks for."""
        hue = tuple(prep.hue_range) if prep.hue_range else None
        return cls(prep.resize, prep.crop, tuple(prep.mean), tuple(prep.std), hue_range=hue, **kwargs)
    device: Device = "cpu"
    batch_size: int = 64
    num_threads: int = 2
    device_id: int = 0


def _decoder_args(device: Device) -> dict:
    """The JPEG decoder: libjpeg-turbo on the CPU, nvJPEG ("mixed") on the GPU. nvJPEG upsamples
    chroma its own way unless asked to do as libjpeg-turbo does ("fancy upsampling", DALI 2.4
    decoders.image ``jpeg_fancy_upsampling``: "Make the mixed backend use the same chroma
    upsampling approach as the cpu one"; DALI issue 3610 names it as the main CPU/GPU difference).
    With it, what remains between the two is IDCT rounding, which JPEG leaves to the decoder (a
    grey level or two on some pixels): the QC checks and the int8 calibration see the same
    pictures on either machine (benchmarks/decoder_parity.py measures it on a GPU)."""
    if device == "gpu":
        return {"device": "mixed", "jpeg_fancy_upsampling": True}
    return {"device": "cpu"}


def _define(spec: PipelineSpec):
    from nvidia.dali import fn, pipeline_def, types

    from bmengine.engine.preprocess.hue import hue_map_dali

    @pipeline_def(enable_conditionals=False)
    def crop_pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        decoded = fn.decoders.image(encoded, output_type=types.RGB, **_decoder_args(spec.device))
        images = fn.resize(decoded, resize_x=spec.resize, resize_y=spec.resize, antialias=True)
        qc_images = images if spec.qc_size == spec.resize else fn.resize(
            decoded, resize_x=spec.qc_size, resize_y=spec.qc_size, antialias=True)
        model_view = hue_map_dali(images, *spec.hue_range) if spec.hue_range else images
        if spec.normalize:
            pixels = fn.crop_mirror_normalize(
                model_view,
                crop=(spec.crop, spec.crop),
                mean=[255.0 * m for m in spec.mean],
                std=[255.0 * s for s in spec.std],
                dtype=types.FLOAT,
                output_layout="CHW",
            )
            return (pixels, qc_images) if spec.qc_output else pixels
        return fn.crop(model_view, crop=(spec.crop, spec.crop), out_of_bounds_policy="trim_to_shape")

    device_id = spec.device_id if spec.device == "gpu" else None
    return crop_pipeline(
        batch_size=spec.batch_size,
        num_threads=spec.num_threads,
        device_id=device_id,
        prefetch_queue_depth=1,
        exec_dynamic=spec.device == "gpu",
    )


class Decoded(NamedTuple):
    """A decoded batch: ``pixels`` holds the crops listed in ``good`` (NumPy on the CPU, a dense
    DALI GPU tensor on the GPU); ``errors[i]`` says why crop i failed; ``qc`` (when the spec asks
    for it) is the resized, uncropped uint8 NHWC image of each good crop on the host, or on the
    GPU the ``QcStats`` the kernels computed from those images there (engine/qc/on_gpu.py)."""

    pixels: object
    good: list[int]
    errors: list[str | None]
    qc: object | None = None
    shapes: list[tuple[int, int, int]] | None = None  # (height, width, channels) of each good crop, from its header


class CropPipeline:
    """Decode a batch of encoded crops; a crop that fails to decode comes back as an error.

    DALI fails a whole batch when one sample is bad, so on failure the batch is retried one crop
    at a time on a fresh pipeline to name the culprits; good crops are never lost. Every crop's
    header is read first: one above the pixel cap (a decompression bomb) never reaches the decoder.
    """

    def __init__(self, spec: PipelineSpec, limits: InputLimits | None = None, cuda_stream: int | None = None):
        self.spec = spec
        self.limits = limits or InputLimits()
        # GPU: the stream the outputs are returned on (the backend's copy stream), so `run` does not
        # wait on the host for them (nvidia/dali/pipeline.py, Pipeline.run(cuda_stream, /, ...))
        self.cuda_stream = cuda_stream if spec.device == "gpu" else None
        self._pipe = None
        self._kernels: bool | None = None  # GPU QC: are torch + Triton here (decided on first use)

    def _pipeline(self):
        if self._pipe is None:
            pipe = _define(self.spec)
            pipe.build()
            self._pipe = pipe
        return self._pipe

    def build(self) -> None:
        """Build the DALI pipeline now (a quarter of a second on a CPU) rather than on the first batch."""
        self._pipeline()

    def _run(self, samples: Sequence[np.ndarray]) -> tuple:
        pipe = self._pipeline()
        pipe.feed_input("encoded", list(samples))
        return pipe.run(self.cuda_stream) if self.cuda_stream is not None else pipe.run()

    def _decoded(self, outputs: tuple, good: list[int], errors: list[str | None], headers: list) -> Decoded:
        qc = None
        if self.spec.qc_output and self.spec.device == "gpu":
            qc = self._gpu_qc(outputs[1])
        elif self.spec.qc_output:
            qc = np.array(outputs[1].as_tensor())  # a copy: DALI reuses its output buffers on the next run
        shapes = [(headers[i].height, headers[i].width, headers[i].channels) for i in good]
        return Decoded(self._dense(outputs[0]), good, errors, qc, shapes)

    def _gpu_qc(self, qc_images):
        """QC numbers computed on the GPU (engine/qc/on_gpu.py), or the images copied to the host
        where the kernels' torch/Triton are missing."""
        from bmengine.engine.qc import on_gpu

        if self._kernels is None:
            self._kernels = on_gpu.kernels_available()
        if self._kernels:
            return on_gpu.qc_stats_on_gpu(qc_images, self.cuda_stream)
        return on_gpu.qc_images_to_host(qc_images)

    def _to_numpy(self, out) -> np.ndarray:
        if self.spec.device == "gpu":
            out = out.as_cpu()
        return np.stack([np.asarray(out[i]) for i in range(len(out))])

    def decode(self, crops: Sequence[bytes | np.ndarray]) -> Decoded:
        """Decode a list of encoded crops; failures are named per crop, never raised."""
        if len(crops) > self.spec.batch_size:
            raise ValueError(f"{len(crops)} crops exceed the pipeline batch size {self.spec.batch_size}")
        samples = [_as_array(c) for c in crops]
        errors: list[str | None] = ["empty crop (0 bytes)" if s.size == 0 else None for s in samples]
        headers: list = [None] * len(samples)
        for i, sample in enumerate(samples):
            if errors[i] is None:
                headers[i], errors[i] = self.limits.check_header(sample)
            if errors[i] is None:
                errors[i] = self.refusal(sample, headers[i])
        good = [i for i, e in enumerate(errors) if e is None]
        if not good:
            return Decoded(None, [], errors)
        self._pipeline()  # a pipeline that cannot be built is the machine's problem, not the crops'
        try:
            return self._decoded(self._run([samples[i] for i in good]), good, errors, headers)
        except RuntimeError:
            self._pipe = None  # a DALI pipeline that failed is no longer valid
        for i in good:  # find the culprits one crop at a time, then decode the rest together
            try:
                self._run([samples[i]])
            except RuntimeError as exc:
                self._pipe = None
                errors[i] = "decode failed: " + describe_decode_failure(samples[i], str(exc))
        good = [i for i, e in enumerate(errors) if e is None]
        if not good:
            return Decoded(None, [], errors)
        return self._decoded(self._run([samples[i] for i in good]), good, errors, headers)

    def refusal(self, sample: np.ndarray, header) -> str | None:
        """Why a crop whose header passed is still not decoded, the same on either device: a JPEG
        cut short, which libjpeg-turbo refuses and nvJPEG would decode with its missing rows filled."""
        if header.format == "jpeg" and jpeg_is_cut_short(sample):
            return TRUNCATED_JPEG + "; not decoded"
        return None

    def decode_to_numpy(self, crops: Sequence[bytes | np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
        """Like :meth:`decode`, as a host array with zeros in the failed crops' slots."""
        decoded = self.decode(crops)
        out = np.zeros((len(crops),) + self.output_shape, dtype=self.output_dtype)
        if decoded.good:
            out[decoded.good] = self.to_numpy(decoded.pixels)
        return out, decoded.errors

    def _dense(self, out):
        """A DALI TensorList as one dense batch: NumPy on the CPU, a contiguous GPU tensor on the GPU."""
        if self.spec.device == "gpu":
            return out.as_tensor()
        # A copy, not a view: DALI reuses its output buffers on the next run, and the engine
        # decodes ahead of inference.
        return np.array(out.as_tensor())

    def to_numpy(self, batch) -> np.ndarray:
        if isinstance(batch, np.ndarray):
            return batch
        return np.asarray(batch.as_cpu())

    @property
    def output_shape(self) -> tuple[int, int, int]:
        c = self.spec.crop
        return (3, c, c) if self.spec.normalize else (c, c, 3)

    @property
    def output_dtype(self):
        return np.float32 if self.spec.normalize else np.uint8


def _as_array(crop: bytes | np.ndarray) -> np.ndarray:
    if isinstance(crop, np.ndarray):
        return crop.astype(np.uint8, copy=False).reshape(-1)
    return np.frombuffer(crop, dtype=np.uint8)


def describe_decode_failure(sample: np.ndarray, message: str) -> str:
    """Name what is wrong with a crop that would not decode (DALI's own text is generic)."""
    from bmengine.engine.store.slide_store import FORMAT_NAMES, sniff_format

    kind = FORMAT_NAMES[sniff_format(memoryview(sample))]
    if kind == "unknown":
        what = f"not a JPEG, PNG or TIFF (starts {bytes(sample[:4]).hex()})"
    elif kind == "jpeg" and bytes(sample[-2:]) != b"\xff\xd9":
        what = TRUNCATED_JPEG
    else:
        what = f"corrupt {kind.upper()} data"
    detail = [ln.strip() for ln in message.splitlines() if ln.strip().startswith(("Failed to", "nvImageCodec"))]
    return what + (f" [{detail[0]}]" if detail else "")
