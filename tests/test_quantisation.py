"""int8 export: which operators get quantised, calibrated on real crops through the engine's pipeline."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the [train] extra")
import onnx  # noqa: E402  (comes with torch in the [train] extra)

from bmengine.engine.backends.onnxruntime_backend import session_options  # noqa: E402
from bmengine.engine.model.card import Preprocessing  # noqa: E402
from bmengine.training.export import export_onnx  # noqa: E402
from bmengine.training.quantize import quantize_int8, resolve_int8_ops  # noqa: E402
from bmengine.engine.model.networks import ModelSpec, create_model  # noqa: E402
from conftest import pbc_files  # noqa: E402

PREP = Preprocessing(resize=36, crop=32)


def _export(backbone: str, path):
    torch.manual_seed(0)
    model = create_model(ModelSpec(backbone, "none", 8, input_size=32)).eval()
    export_onnx(model, path, 32, opset=17)
    return path


def _reading_int8(path) -> dict[str, set[str]]:
    """Nodes by op type (and "Op:slot") that read a dequantised tensor: an int8 activation (DQ after Q)
    or, under "Op:w<slot>", an int8 initializer such as a convolution's weights."""
    graph = onnx.load(str(path)).graph
    quantised = {node.output[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    activations = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"
                   and node.input[0] in quantised}
    weights = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"
               and node.input[0] not in quantised}
    reading: dict[str, set[str]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in activations:
                reading.setdefault(node.op_type, set()).add(node.name)
            if name in weights:
                reading.setdefault(f"{node.op_type}:w{slot}", set()).add(node.name)
    return reading


def _calibration() -> list[str]:
    return [str(f) for cls in ("neutrophil", "lymphocyte", "eosinophil", "platelet") for f in pbc_files(cls, 4)]


def test_auto_picks_conv_only_for_attention_graphs_and_all_for_plain_cnns(tmp_path):
    assert resolve_int8_ops("auto", _export("multiscale_cross_attention", tmp_path / "msca.onnx")) == "conv"
    assert resolve_int8_ops("auto", _export("regnetx_002", tmp_path / "regnet.onnx")) == "all"
    assert resolve_int8_ops("all", tmp_path / "msca.onnx") == "all"
    with pytest.raises(ValueError, match="unknown int8 operator set 'fp8'"):
        resolve_int8_ops("fp8", tmp_path / "msca.onnx")


def test_conv_set_keeps_attention_in_fp32_and_stays_close_to_it(tmp_path):
    import onnxruntime as ort

    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    fp32 = _export("multiscale_cross_attention", tmp_path / "msca.onnx")
    calibration = _calibration()
    for ops in ("all", "conv"):
        quantize_int8(fp32, tmp_path / f"msca_{ops}.onnx", calibration, PREP, ops)
    everything, convs = _reading_int8(tmp_path / "msca_all.onnx"), _reading_int8(tmp_path / "msca_conv.onnx")
    attention_ops = {"MatMul", "Softmax", "LayerNormalization"}
    assert {"MatMul", "Softmax"} <= set(everything)  # the full set reaches into the attention
    assert not attention_ops & set(convs), sorted(attention_ops & set(convs))  # the conv set keeps it fp32
    n_convs = sum(node.op_type == "Conv" for node in onnx.load(str(fp32)).graph.node)
    assert len(convs["Conv:w1"]) == n_convs  # every convolution still takes int8 weights
    held_out = [f.read_bytes() for cls in ("neutrophil", "monocyte") for f in pbc_files(cls, 4, offset=20)]
    batch, _ = CropPipeline(PipelineSpec.from_preprocessing(PREP, batch_size=8)).decode_to_numpy(held_out)

    def logits(path):
        return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"]).run(
            None, {"image": batch})[0]

    reference = logits(fp32)
    scale = np.abs(reference).max()
    assert np.abs(logits(tmp_path / "msca_conv.onnx") - reference).max() < 0.1 * scale


@pytest.mark.parametrize("method", ["percentile", "minmax"])
def test_calibration_set_not_a_multiple_of_the_batch_quantises(tmp_path, method):
    """40 crops make a batch of 32 and one of 8; the percentile calibrator stacks all batches into one
    array, so a short last batch used to fail export (a fine-tune's 350-crop training split did)."""
    from bmengine.training.quantize import CalibrationReader

    files = [str(f) for cls in ("neutrophil", "lymphocyte") for f in pbc_files(cls, 20)]
    reader = CalibrationReader(files, PREP, "image", batch_size=32)
    shapes = []
    while (batch := reader.get_next()) is not None:
        shapes.append(batch["image"].shape)
    assert shapes == [(32, 3, 32, 32)] * 2  # 40 crops, the second batch filled from the start
    fp32 = _export("regnetx_002", tmp_path / "m.onnx")
    quantize_int8(fp32, tmp_path / "m_int8.onnx", files, PREP, "all", method)
    assert (tmp_path / "m_int8.onnx").stat().st_size > 0


def test_named_nodes_stay_fp32_in_the_int8_model_and_a_fragment_that_names_none_is_refused(tmp_path):
    """``--int8-keep-fp32``: the last stage (whose features the OOD distance reads) left fp32 while
    the rest is int8; a typo must not give a plain int8 model whose card says otherwise."""
    from bmengine.training.quantize import KeepFp32Error

    fp32 = _export("regnetx_002", tmp_path / "regnet.onnx")
    last_stage = {node.name for node in onnx.load(str(fp32)).graph.node if "/s4/" in node.name}
    assert last_stage
    kept = quantize_int8(fp32, tmp_path / "kept.onnx", _calibration(), PREP, "all", keep_fp32=("/s4/",))
    assert kept == len(last_stage)
    reading = _reading_int8(tmp_path / "kept.onnx")
    int8_readers = set().union(*reading.values())
    assert not int8_readers & last_stage, sorted(int8_readers & last_stage)[:5]
    assert any("/s1/" in name for name in reading["Conv:w1"])  # the earlier stages are still int8
    assert any("/s3/" in name for name in reading["Conv"])
    with pytest.raises(KeepFp32Error, match=r"no node of regnet.onnx has '/stages.3/'.*/s4/"):
        quantize_int8(fp32, tmp_path / "typo.onnx", _calibration(), PREP, "all", keep_fp32=("/stages.3/",))
    assert not (tmp_path / "typo.onnx").exists()


def test_export_refuses_a_keep_fp32_fragment_that_names_no_node_and_leaves_nothing_behind(trained_run, tmp_path):
    import subprocess

    from conftest import BMENGINE

    out = tmp_path / "typo.onnx"
    done = subprocess.run(BMENGINE + ["export", str(trained_run.parents[1] / "checkpoints" / "last.pt"), "--out",
                                      str(out), "--calibration-images", "32", "--int8-keep-fp32", "/stages.3/"],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: --int8-keep-fp32: no node of typo.onnx has '/stages.3/' in its name" in done.stderr
    assert "/s4/" in done.stderr  # the scopes it does have, to pick from
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_export_refuses_keep_fp32_without_an_int8_model(trained_run, tmp_path):
    """``--int8-keep-fp32`` with ``--no-int8`` would be silently ignored: refused before anything is written."""
    import subprocess

    from conftest import BMENGINE

    out = tmp_path / "plain.onnx"
    done = subprocess.run(BMENGINE + ["export", str(trained_run.parents[1] / "checkpoints" / "last.pt"), "--out",
                                      str(out), "--no-int8", "--int8-keep-fp32", "/s4/"],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--int8-keep-fp32 shapes the int8 model, which --no-int8 leaves out" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def _calibration_augment(preset: str = "cross-lab", **options):
    from bmengine.training.quantize import CalibrationAugment

    return CalibrationAugment.resolve(preset, options, {"config": {}}, PREP.crop)


def test_augmented_calibration_sees_each_real_batch_clean_and_then_changed():
    """``--calibration-augment``: every clean batch is handed to the calibrator as before, followed by
    an augmented copy of the same crops (so the clean ranges stay covered); an augmentation that does
    nothing gives back the clean batch to within a grey level."""
    from bmengine.training.quantize import CalibrationReader

    files = _calibration()

    def batches(augment):
        reader = CalibrationReader(files, PREP, "image", batch_size=8, augment=augment)
        out = []
        while (batch := reader.get_next()) is not None:
            out.append(batch["image"])
        return out

    clean = batches(None)
    augmented = batches(_calibration_augment("cross-lab", colour_p=1.0, hue=90.0))
    assert len(clean) == 2 and len(augmented) == 4
    for i, batch in enumerate(clean):
        np.testing.assert_array_equal(augmented[2 * i], batch)
        copy = augmented[2 * i + 1]
        assert copy.shape == batch.shape and copy.dtype == np.float32
        assert np.abs(copy - batch).mean() > 0.1  # colours, turns and zoom changed
    grey_level = 1 / 255 / min(PREP.std) + 1e-5
    identity = batches(_calibration_augment("basic", flips=False, rot90=False, brightness=0.0, contrast=0.0))
    for i, batch in enumerate(clean):
        assert np.abs(identity[2 * i + 1] - batch).max() <= grey_level


def _activation_scales(path) -> dict[str, float]:
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {node.input[0]: float(init[node.input[1]]) for node in graph.node
            if node.op_type == "QuantizeLinear" and node.input[1] in init and init[node.input[1]].size == 1}


def test_minmax_ranges_calibrated_with_augmented_copies_contain_the_clean_ranges(tmp_path):
    """The clean crops are a subset of what the augmented calibration sees, so with MinMax every
    activation's range can only widen, and the stain/hue/gamma changes widen the image's own."""
    fp32 = _export("regnetx_002", tmp_path / "m.onnx")
    files = _calibration()
    quantize_int8(fp32, tmp_path / "clean.onnx", files, PREP, "all", "minmax")
    quantize_int8(fp32, tmp_path / "aug.onnx", files, PREP, "all", "minmax",
                  augment=_calibration_augment("cross-lab", colour_p=1.0, hue=90.0))
    clean, aug = _activation_scales(tmp_path / "clean.onnx"), _activation_scales(tmp_path / "aug.onnx")
    assert clean.keys() == aug.keys() and "image" in clean
    assert all(aug[name] >= clean[name] * (1 - 1e-6) for name in clean)
    assert aug["image"] > clean["image"] * 1.05


def test_export_records_the_calibration_augmentation_and_refuses_one_that_would_do_nothing(trained_run, tmp_path):
    import json
    import subprocess

    from conftest import BMENGINE

    checkpoint = str(trained_run.parents[1] / "checkpoints" / "last.pt")
    out = tmp_path / "m.onnx"
    done = subprocess.run(BMENGINE + ["export", checkpoint, "--out", str(out), "--calibration-images", "16",
                                      "--no-evaluate", "--no-ood", "--no-calibrate", "--calibration-augment",
                                      "training", "--calibration-augment-opt", "hue=90"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "and an augmented copy of each" in done.stderr
    record = json.loads((tmp_path / "m_int8.onnx.card.json").read_text())["training"]["calibration_augmentation"]
    assert record["from"] == "training" and record["preset"] == "basic"  # the tiny run's own recipe
    assert record["options"] == {"hue": 90.0} and record["config"]["hue"] == 90.0
    assert record["clean_crops"] == 8  # 16 crops in all: 8 clean, 8 augmented copies
    assert "calibration_augmentation" not in json.loads((tmp_path / "m.onnx.card.json").read_text())["training"]
    refused = {("--calibration-augment", "colour"): "--calibration-augment 'colour': choose one of none, training",
               ("--calibration-augment-opt", "hue=90"): "--calibration-augment-opt needs --calibration-augment",
               ("--calibration-augment", "stain", "--calibration-augment-opt", "hues=90"):
                   "--calibration-augment-opt 'hues=90': expected KEY=VALUE",
               ("--calibration-augment", "stain", "--no-int8"): "--calibration-augment shapes the int8 model"}
    for args, message in refused.items():
        target = tmp_path / "refused" / "m.onnx"
        done = subprocess.run(BMENGINE + ["export", checkpoint, "--out", str(target), *args],
                              capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr[-1500:])
        assert "Traceback" not in done.stderr and not target.parent.exists()


def test_calibration_that_would_exhaust_memory_is_refused_with_a_count_that_fits(tmp_path):
    """ONNX Runtime's calibrators hold every recorded activation of every crop at once (12 GB for 256
    CoAtNet-0 crops): the estimate follows the graph's real tensor shapes, and a count over the
    available memory is refused before calibrating, naming the largest count that fits."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bmengine.training.quantize import CalibrationMemoryError, activation_bytes_per_crop, check_calibration_memory

    def per_crop(size: int, ops):
        torch.manual_seed(0)
        model = create_model(ModelSpec("regnetx_002", "none", 8, input_size=size)).eval()
        export_onnx(model, tmp_path / f"r{size}.onnx", size, opset=17)
        quant_pre_process(str(tmp_path / f"r{size}.onnx"), str(tmp_path / f"r{size}.pre.onnx"), skip_symbolic_shape=True)
        return activation_bytes_per_crop(onnx.load(str(tmp_path / f"r{size}.pre.onnx")).graph, ops)

    conv32, conv64, all32 = per_crop(32, ("Conv", "Gemm")), per_crop(64, ("Conv", "Gemm")), per_crop(32, None)
    assert conv32 > 3 * 32 * 32 * 4  # more than the image itself
    assert all32 > conv32  # every node's tensors include the convolutions'
    assert 3.5 < conv64 / conv32 < 4.1  # activations grow with the pixels (the pooled head does not)
    gib = 1024**3
    check_calibration_memory(conv32, 256, available=8 * gib)  # a few MB: fine
    check_calibration_memory(conv32, 256, available=None)  # no /proc/meminfo: not checked
    with pytest.raises(CalibrationMemoryError, match=r"on 4096 crops would need about .* GiB .* "
                                                     r"use --calibration-images (\d+) or fewer") as refused:
        check_calibration_memory(35_000_000, 4096, available=16 * gib)
    fits = int(str(refused.value).split("--calibration-images ")[1].split()[0])
    check_calibration_memory(35_000_000, fits, available=16 * gib)
    with pytest.raises(CalibrationMemoryError):
        check_calibration_memory(35_000_000, fits + 1, available=16 * gib)
