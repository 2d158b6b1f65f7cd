"""``Engine``: a backend and its preprocessing pipeline, set up once per process from a model.

A run builds one in its own process (the local runner) or one per Dask worker (the Dask runner,
from the same picklable ``EngineSpec``), and every slide that process handles goes through it.
``ModelRef`` is the model without its runtime: what a planner needs (the card, label map and
digests), so a Dask client never loads a backend it does not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bmengine.engine.backends import Backend, BackendOptions, backend_for, load_backend
from bmengine.engine.labels import LabelMap
from bmengine.engine.model.card import ModelCard, card_path_for, load_card
from bmengine.engine.pipeline import resume
from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
from bmengine.engine.store.limits import InputLimits


@dataclass(frozen=True)
class EngineSpec:
    """Everything a process needs to build its Engine; small and picklable (it travels to workers)."""

    model: Path
    batch_size: int = 64
    threads: int = 2
    device_id: int = 0
    limits: InputLimits = field(default_factory=InputLimits)
    label_map: Path | None = None


@dataclass
class ModelRef:
    """A model as the planner and the run record see it: card, label map, digests; no runtime."""

    spec: EngineSpec
    card: ModelCard
    label_map: LabelMap
    card_sha256: str  # of the whole card file: part of every slide's resume key
    backend_name: str

    @classmethod
    def load(cls, spec: EngineSpec, card: ModelCard | None = None) -> "ModelRef":
        card = card or load_card(spec.model)
        label_map = LabelMap.load(spec.label_map, card.classes) if spec.label_map is not None else LabelMap()
        return cls(spec, card, label_map, resume.card_digest(card_path_for(Path(spec.model))),
                   backend_for(Path(spec.model))[0])

    @property
    def model_info(self) -> dict:
        card = self.card
        return {"path": str(self.spec.model), "name": card.name, "sha256": card.weights_sha256,
                "precision": card.precision, "backend": self.backend_name, "taxonomy": card.taxonomy}

    def close(self) -> None:
        """Nothing to release (the same call as ``Engine.close``)."""


@dataclass
class Engine:
    model: ModelRef
    backend: Backend
    pipeline: CropPipeline

    @classmethod
    def load(cls, spec: EngineSpec) -> "Engine":
        return cls.around(load_backend(spec.model, BackendOptions(spec.threads, spec.device_id, spec.batch_size)), spec)

    @classmethod
    def around(cls, backend: Backend, spec: EngineSpec | None = None) -> "Engine":
        """The Engine of an already-loaded backend (the one place a pipeline is built from a card)."""
        options = backend.options
        spec = spec or EngineSpec(Path(backend.model_path), batch_size=options.max_batch_size,
                                  threads=options.threads, device_id=options.device_id)
        card = backend.card
        pipeline = CropPipeline(PipelineSpec.from_preprocessing(
            card.preprocessing, device=backend.device, batch_size=spec.batch_size, num_threads=spec.threads,
            device_id=spec.device_id, qc_output=True), limits=spec.limits,
            cuda_stream=getattr(backend, "input_stream", None))  # GPU: DALI's outputs land on the backend's stream
        return cls(ModelRef.load(spec, card), backend, pipeline)

    @property
    def spec(self) -> EngineSpec:
        return self.model.spec

    @property
    def card(self) -> ModelCard:
        return self.backend.card

    @property
    def label_map(self) -> LabelMap:
        return self.model.label_map

    @property
    def card_sha256(self) -> str:
        return self.model.card_sha256

    @property
    def model_info(self) -> dict:
        """The model as run.json names it, with where it ran ("cpu", or "gpu:N") and how the runtime
        computed it where that matters (the int8 kernels on a CPU)."""
        device = "cpu" if self.backend.device == "cpu" else f"gpu:{self.spec.device_id}"
        return {**self.model.model_info, "backend": self.backend.name, "device": device,
                **self.backend.runtime_info()}

    def close(self) -> None:
        self.backend.close()
