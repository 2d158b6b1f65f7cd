"""``Engine``: a backend and its preprocessing pipeline, set up once per process from a model.

A run builds one in its own process (the local runner) or one per Dask worker (the Dask runner,
from the same picklable ``EngineSpec``), and every slide that process handles goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bmengine.engine.backends import Backend, BackendOptions, load_backend
from bmengine.engine.labels import LabelMap
from bmengine.engine.model.card import ModelCard, card_path_for
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
class Engine:
    spec: EngineSpec
    backend: Backend
    pipeline: CropPipeline
    label_map: LabelMap
    card_sha256: str  # of the whole card file: part of every slide's resume key

    @classmethod
    def load(cls, spec: EngineSpec) -> "Engine":
        backend = load_backend(spec.model, BackendOptions(spec.threads, spec.device_id, spec.batch_size))
        card = backend.card
        pipeline = CropPipeline(PipelineSpec.from_preprocessing(
            card.preprocessing, device=backend.device, batch_size=spec.batch_size, num_threads=spec.threads,
            device_id=spec.device_id, qc_output=True), limits=spec.limits,
            cuda_stream=getattr(backend, "input_stream", None))  # GPU: DALI's outputs land on the backend's stream
        label_map = LabelMap.load(spec.label_map, card.classes) if spec.label_map is not None else LabelMap()
        return cls(spec, backend, pipeline, label_map, resume.card_digest(card_path_for(Path(spec.model))))

    @property
    def card(self) -> ModelCard:
        return self.backend.card

    @property
    def model_info(self) -> dict:
        card = self.card
        return {"path": str(self.spec.model), "name": card.name, "sha256": card.weights_sha256,
                "precision": card.precision, "backend": self.backend.name, "taxonomy": card.taxonomy}

    def close(self) -> None:
        self.backend.close()
