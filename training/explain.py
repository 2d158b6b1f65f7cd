"""Where does the model look? Grad-CAM (pytorch-grad-cam) and SmoothGrad overlays for crops.

Hu et al. and Tripathi et al. check that a cell classifier attends to the nucleus and cytoplasm,
not the background. Grad-CAM weights the last feature stage by its pooled gradients;
SmoothGrad (Smilkov et al. 2017) averages input gradients over noisy copies of the crop.
Crops are decoded with the engine's own DALI pipeline, so the model sees what it sees in a run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bmengine.engine.outputs.atomic import atomic_write_bytes


@dataclass(frozen=True)
class Explanation:
    source: str
    predicted: str
    probability: float
    grad_cam: np.ndarray  # (H, W) in 0..1
    smooth_grad: np.ndarray  # (H, W) in 0..1


def load_checkpoint_model(checkpoint: Path):
    """The model and checkpoint, read as data only (``weights_only``): never unpickled."""
    from bmengine.training.checkpoint import load_model

    return load_model(checkpoint, require=("config", "classes"))


def last_feature_stage(model: torch.nn.Module) -> torch.nn.Module:
    """timm names its last feature stage in ``feature_info`` (RegNet 's4', ResNet 'layer4', ...)."""
    return model.get_submodule(model.feature_info[-1]["module"])


def smooth_grad(model: torch.nn.Module, x: torch.Tensor, target: int, samples: int = 16, noise: float = 0.15,
                seed: int = 0) -> np.ndarray:
    """Mean |d score / d input| over ``samples`` noisy copies; max over channels; scaled to 0..1."""
    generator = torch.Generator().manual_seed(seed)
    sigma = noise * float(x.max() - x.min())
    noisy = (x + sigma * torch.randn((samples,) + tuple(x.shape[1:]), generator=generator)).requires_grad_(True)
    model(noisy)[:, target].sum().backward()
    saliency = noisy.grad.abs().mean(dim=0).amax(dim=0).numpy()
    return saliency / max(float(saliency.max()), 1e-12)


def explain(checkpoint: Path, files: Sequence[Path], smooth_samples: int = 16) -> tuple[list[Explanation], np.ndarray]:
    """Explanations for each file, and the decoded uint8 crops (N, crop, crop, 3) they refer to."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    model, state = load_checkpoint_model(checkpoint)
    cfg = state["config"]
    blobs = [Path(f).read_bytes() for f in files]
    hue = cfg.get("hue_range")
    spec = dict(resize=cfg["resize"], crop=cfg["crop"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                batch_size=max(1, len(blobs)), hue_range=tuple(hue) if hue else None)
    x, errors = CropPipeline(PipelineSpec(**spec)).decode_to_numpy(blobs)
    pixels, _ = CropPipeline(PipelineSpec(**spec, normalize=False)).decode_to_numpy(blobs)
    if bad := [f"{f}: {e}" for f, e in zip(files, errors) if e]:
        raise ValueError("cannot explain crops that do not decode: " + "; ".join(bad))
    batch = torch.from_numpy(x)
    with torch.no_grad():
        probs = model(batch).softmax(dim=1).numpy()
    predicted = probs.argmax(axis=1)
    with GradCAM(model=model, target_layers=[last_feature_stage(model)]) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(c)) for c in predicted])
    classes = state["classes"]
    out = [Explanation(str(f), classes[c], float(probs[i, c]), maps[i],
                       smooth_grad(model, batch[i : i + 1], int(c), smooth_samples)) for i, (f, c) in
           enumerate(zip(files, predicted))]
    return out, pixels


def write_overlays(explanations: list[Explanation], pixels: np.ndarray, out_dir: Path) -> list[Path]:
    """One PNG per crop: the crop, its Grad-CAM overlay and its SmoothGrad map side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from pytorch_grad_cam.utils.image import show_cam_on_image

    paths = []
    for i, e in enumerate(explanations):
        image = pixels[i].astype(np.float32) / 255.0
        fig = Figure(figsize=(7.5, 2.8), dpi=100)
        FigureCanvasAgg(fig)
        panels = (image, show_cam_on_image(image, e.grad_cam, use_rgb=True), e.smooth_grad)
        for k, (panel, title) in enumerate(zip(panels, ("crop", "Grad-CAM", "SmoothGrad"))):
            ax = fig.add_subplot(1, 3, k + 1)
            ax.imshow(panel, cmap="inferno" if panel.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{Path(e.source).name}: {e.predicted} ({e.probability:.1%})", fontsize=9)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
        path = out_dir / f"{i:04d}_{Path(e.source).stem}.png"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
