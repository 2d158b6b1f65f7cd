"""Open-set scoring: a Mahalanobis out-of-distribution score computed inside the exported model.

The score of a crop is its squared Mahalanobis distance to the nearest class mean in the model's
penultimate feature space (the pooled features the classifier layer reads), with one covariance
shared by all classes (Lee et al. 2018, "tied" covariance):

    score(f) = min_c (f - mu_c)^T P (f - mu_c) = min_c || f L - mu_c L ||^2,   P = L L^T

The class means ``mu_c`` and the precision ``P`` are fitted on the training split's features at
export; the covariance is shrunk towards a scaled identity (Ledoit-Wolf) so it stays invertible
when there are fewer crops than feature dimensions. ``L`` (the Cholesky factor of ``P``) and the
projected means ``mu_c L`` are constants of the ONNX graph, which gets a second output
``ood_score``: every runtime computes it, the card's sha256 covers it, and no sidecar file travels
with the model. The threshold is set on the validation split (see ``threshold_at``).

Only this module and ``training/export.py`` need PyTorch; the NumPy functions here are the
reference the tests check the graph against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_NAME = "mahalanobis-tied"
OUTPUT_NAME = "ood_score"
FEATURES_NAME = "features"
#: prefix of every node of the OOD head in the exported graph (int8 export keeps them fp32)
HEAD_SCOPE = "ood_head"


@dataclass
class TiedGaussian:
    """Class means and the shared precision's Cholesky factor, in the model's feature space."""

    means: np.ndarray  # (C', D): one row per class present in the fitting data
    class_index: np.ndarray  # (C',): which model class each row belongs to
    chol: np.ndarray  # (D, D) lower-triangular L with P = L L^T
    shrinkage: float  # Ledoit-Wolf weight of the scaled identity, 0..1
    n_fit: int

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def projected_means(self) -> np.ndarray:
        return (self.means @ self.chol).astype(np.float32)

    def score(self, features: np.ndarray) -> np.ndarray:
        """The NumPy reference of the graph's ``ood_score`` (float64 here)."""
        z = np.asarray(features, dtype=np.float64) @ self.chol
        centers = self.means.astype(np.float64) @ self.chol
        d = z[:, None, :] - centers[None, :, :]
        return np.einsum("ncd,ncd->nc", d, d).min(axis=1)


def ledoit_wolf(centered: np.ndarray, min_shrinkage: float = 0.0) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004) shrunk covariance of already-centred rows: (1-s) S + s mu I, with
    s = max(Ledoit-Wolf's weight, ``min_shrinkage``)."""
    x = np.asarray(centered, dtype=np.float64)
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    delta = ((s - mu * np.eye(p)) ** 2).sum() / p
    x2 = x ** 2
    beta = ((x2.T @ x2).sum() / n - (s ** 2).sum()) / (p * n)
    beta = min(beta, delta)
    shrink = max(0.0 if delta == 0 else float(beta / delta), min_shrinkage)
    return (1 - shrink) * s + shrink * mu * np.eye(p), shrink


#: least weight of the scaled identity in the shrunk covariance. Ledoit-Wolf alone picks ~0.005 on
#: 4,000 crops of 384-d features; then the directions where training features barely vary get huge
#: weights, and the int8 model's quantisation noise in them doubled its scores (median int8/fp32
#: 2.3) and cost 0.07 AUROC. A floor of 0.1 brought that to 1.27 and raised both models' AUROC
#: (held-out basophil, benchmarks/results/open-set.md).
MIN_SHRINKAGE = 0.1


def fit_tied_gaussian(features: np.ndarray, labels: np.ndarray, eps: float = 1e-6,
                      min_shrinkage: float = MIN_SHRINKAGE) -> TiedGaussian:
    """Class means and a shrunk covariance shared by all classes (each crop centred on its own class
    mean): Ledoit-Wolf's weight, at least ``min_shrinkage``. Classes absent from ``labels`` (e.g.
    one held out) get no mean."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    present = np.unique(labels)
    means = np.stack([f[labels == c].mean(axis=0) for c in present])
    centered = f - means[np.searchsorted(present, labels)]
    cov, shrink = ledoit_wolf(centered, min_shrinkage)
    cov += eps * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])  # never singular, whatever the data
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2
    chol = np.linalg.cholesky(precision)
    return TiedGaussian(means.astype(np.float32), present.astype(np.int64), chol.astype(np.float32), shrink, len(f))


def threshold_at(scores: np.ndarray, false_flag_rate: float) -> float:
    """The score above which at most ``false_flag_rate`` of these in-distribution crops lie
    (crops are flagged when ``score > threshold``)."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    return float(np.quantile(scores, 1 - false_flag_rate, method="higher"))


# -- logit-based scores, for comparison (higher = more out-of-distribution) ---------------------

def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy flipped to 'higher = more unknown': -T logsumexp(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=1, keepdims=True)
    return -temperature * (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def max_softmax_score(logits: np.ndarray) -> np.ndarray:
    """1 - max softmax probability (Hendrycks & Gimpel), higher = more unknown."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return 1 - p.max(axis=1)


def auroc(unknown_scores: np.ndarray, known_scores: np.ndarray) -> float:
    """P(score of an unknown crop > score of a known one), ties counting half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(unknown_scores, float), np.asarray(known_scores, float)
    ranks = rankdata(np.r_[pos, neg])
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


# -- the graph ---------------------------------------------------------------------------------

def classifier_layer(model, num_classes: int):
    """The final linear layer (its input is the pooled pre-logits feature vector)."""
    from torch import nn

    get = getattr(model, "get_classifier", None)
    layer = get() if callable(get) else None
    if isinstance(layer, nn.Linear) and layer.out_features == num_classes:
        return layer
    linear = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not linear:
        raise ValueError(f"{type(model).__name__}: no linear classifier layer with {num_classes} outputs")
    return linear[-1]


def _torch_modules():
    import torch
    from torch import nn

    class FeatureTap(nn.Module):
        """(logits, features): the features are the classifier layer's input, caught by a hook."""

        def __init__(self, model, num_classes: int):
            super().__init__()
            self.model = model
            self._classifier = [classifier_layer(model, num_classes)]  # a list: not a second submodule

        def forward(self, x):
            caught = []
            handle = self._classifier[0].register_forward_pre_hook(lambda module, args: caught.append(args[0]))
            try:
                logits = self.model(x)
            finally:
                handle.remove()
            (features,) = caught
            return logits, features.flatten(1)

    class MahalanobisHead(nn.Module):
        def __init__(self, stats: TiedGaussian):
            super().__init__()
            self.register_buffer("chol", torch.from_numpy(np.ascontiguousarray(stats.chol, dtype=np.float32)))
            self.register_buffer("centers", torch.from_numpy(stats.projected_means()))

        def forward(self, features):
            z = torch.matmul(features.float(), self.chol)  # (N, D)
            d = z.unsqueeze(1) - self.centers.unsqueeze(0)  # (N, C', D)
            return (d * d).sum(dim=2).min(dim=1).values  # (N,)

    class WithOOD(nn.Module):
        def __init__(self, model, num_classes: int, stats: TiedGaussian):
            super().__init__()
            self.tap = FeatureTap(model, num_classes)
            setattr(self, HEAD_SCOPE, MahalanobisHead(stats))

        def forward(self, x):
            logits, features = self.tap(x)
            return logits, getattr(self, HEAD_SCOPE)(features)

    return FeatureTap, WithOOD


def feature_model(model, num_classes: int):
    """The model with a second output: its penultimate features (N, D)."""
    FeatureTap, _ = _torch_modules()
    return FeatureTap(model, num_classes).eval()


def model_with_ood(model, num_classes: int, stats: TiedGaussian):
    """The model with a second output: ``ood_score`` (N,), the Mahalanobis score of its features."""
    _, WithOOD = _torch_modules()
    return WithOOD(model, num_classes, stats).eval()


def head_nodes(graph) -> list[str]:
    """Names of the OOD head's nodes in an exported ONNX graph (exported from ``model_with_ood``)."""
    return [node.name for node in graph.node if node.name.startswith(f"/{HEAD_SCOPE}/")]


#: operators that re-arrange or average their first input on the way to the head's features (timm:
#: the pooling, its Flatten and the feature tap's Flatten, all outside the head); quantised copies of
#: them are replaced by float ones
FEATURE_PATH_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "GlobalAveragePool")


def unquantise_inputs(model_path, fp32_nodes: list[str]) -> int:
    """After static QDQ quantisation, an excluded node's input (the OOD head's, or that of a node kept
    fp32 by ``--int8-keep-fp32``) may be the Q->DQ'd copy of the features
    (ONNX Runtime re-wires every consumer of a quantised tensor), directly or through pooling and layout ops
    outside the head; feed it the float tensor again (float copies of the ops on the way where there
    are some), so the head is fp32 end to end. Why it matters: the int8 range is calibrated on training
    crops, so a quantised copy clips exactly the large feature values that make a crop unknown.
    Returns the number of inputs re-wired."""
    import onnx

    model = onnx.load(str(model_path))
    graph = model.graph
    nodes = []
    for original in graph.node:  # copies: the graph's own list is replaced below
        nodes.append(onnx.NodeProto())
        nodes[-1].CopyFrom(original)
    producer = {out: node for node in nodes for out in node.output}
    head = set(fp32_nodes)  # the OOD head, and any other node kept fp32

    copies: dict[str, str] = {}  # tensor -> its float copy, made once

    def float_source(name: str) -> str | None:
        """The float tensor behind ``name``, or None where ``name`` is already as float as it gets.
        Walks back through Q->DQ pairs and FEATURE_PATH_OPS (which "all"-operator quantisation also
        quantises), down to the first operator that computes."""
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "DequantizeLinear":
            q = producer.get(node.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                return None  # a weight: no Q node
            return float_source(q.input[0]) or q.input[0]
        if node.op_type not in FEATURE_PATH_OPS or node.name in head:
            return None
        if name not in copies:
            source = float_source(node.input[0])
            if source is None:
                return None
            copy = onnx.helper.make_node(node.op_type, [source, *node.input[1:]], [f"{name}_float"],
                                         name=f"{node.name}_float")
            copy.attribute.extend(node.attribute)
            nodes.insert(nodes.index(node) + 1, copy)  # keeps the node list in topological order
            producer[copy.output[0]] = copy
            copies[name] = copy.output[0]
        return copies[name]

    rewired = 0
    for node in [n for n in nodes if n.name in head]:
        for i, name in enumerate(node.input):
            source = float_source(name)
            if source is not None:
                node.input[i] = source
                rewired += 1
    if rewired:
        del graph.node[:]
        graph.node.extend(_without_dead_nodes(nodes, {o.name for o in graph.output}))
        onnx.save(model, str(model_path))
    return rewired


def _without_dead_nodes(nodes: list, outputs: set[str]) -> list:
    """``nodes`` less those whose outputs nobody reads any more (repeated: a dead node's inputs may
    leave its producer dead too)."""
    while True:
        used = {name for node in nodes for name in node.input} | outputs
        alive = [node for node in nodes if any(o in used for o in node.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive
