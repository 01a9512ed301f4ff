"""int8 export (tools/export_model.py --quantize int8) and the runtime's precision="int8", and the
exported graph's declared outputs checked against metadata.json when a session opens."""

import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto

from efficientps_runtime import ModelFolderError, PrecisionError, Session

from .helpers import DEMO_CONFIG, random_demo_checkpoint
from .test_deployment import SMALL, load_export_tool


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A small random demo model exported with an int8 graph calibrated on 3 of its 5 images."""
    root = tmp_path_factory.mktemp("int8")
    images, opts = random_demo_checkpoint(root, "synth_int8", SMALL, count=5, seed=5)
    model_dir = root / "exported"
    calibration = [f"--calibration-images={path}" for path in images[:3]]
    report = load_export_tool().main(
        ["--config-file", DEMO_CONFIG, "--output", str(model_dir), "--sample-image",
         str(images[4]), "--quantize", "int8", *calibration, *opts]
    )  # fmt: skip
    return model_dir, images, report


@pytest.mark.parametrize(
    "backend, name, outputs_quantized",
    [("onnxruntime", "model_int8_onnxruntime.onnx", True),
     ("openvino", "model_int8_openvino.onnx", False)],
)  # fmt: skip
def test_int8_graphs_have_int8_weights_for_every_conv_and_gemm(
    quantized, backend, name, outputs_quantized
):
    """Every Conv/Gemm reads int8 weights and a quantized activation; its output is quantized
    in onnxruntime's graph (fused into QLinearConv); in OpenVINO's, Q/DQ pairs feed layers only
    (NNCF's placement, which OpenVINO computes correctly)."""
    model_dir, _, report = quantized
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "metadata.json",
        "model.onnx",
        "model_int8_onnxruntime.onnx",
        "model_int8_openvino.onnx",
    ]
    entry = json.loads((model_dir / "metadata.json").read_text())["precisions"]["int8"]
    assert entry["models"][backend] == name and entry["calibration_images"] == 3
    graph = onnx.load(str(model_dir / name)).graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node.op_type)
    layers = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    float_layers = len([n for n in onnx.load(str(model_dir / "model.onnx")).graph.node
                        if n.op_type in ("Conv", "Gemm")])  # fmt: skip
    assert len(layers) == float_layers > 50
    for node in layers:
        for index in (0, 1):  # activation and weight both come through a DequantizeLinear
            dequantize = producers[node.input[index]]
            assert dequantize.op_type == "DequantizeLinear", node.name
        weight = producers[node.input[1]].input[0]
        assert initializers[weight].data_type == TensorProto.INT8, node.name
        if outputs_quantized:
            assert "QuantizeLinear" in consumers.get(node.output[0], []), node.name
    if not outputs_quantized:
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] not in initializers:
                assert set(consumers[node.output[0]]) <= {"Conv", "Gemm"}, node.name
    assert report["int8"]["detections (float32, int8)"][0] > 0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_session_is_close_to_float32_but_not_equal(quantized, backend):
    model_dir, images, _ = quantized
    exact = Session(model_dir, backend=backend)
    int8 = Session(model_dir, backend=backend, precision="int8")
    for path in images:
        image = cv2.imread(str(path))
        reference = exact.predict_full(image)
        prediction = int8.predict_full(image)
        error = np.abs(prediction.sem_logits - reference.sem_logits).max()
        scale = np.abs(reference.sem_logits).max()
        assert 1e-4 * scale < error < 0.15 * scale  # really quantized, and still close
        same = np.mean(prediction.sem_logits.argmax(0) == reference.sem_logits.argmax(0))
        assert same > 0.97
    if backend == "openvino":  # the graph's float operations stay float32
        assert int8._run.inference_precision == "<Type: 'float32'>"


def test_int8_is_refused_without_an_int8_graph_and_calibration_is_checked_first(
    quantized, tmp_path
):
    model_dir, images, _ = quantized
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(model_dir / "model.onnx", plain)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    metadata.pop("precisions")
    (plain / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(PrecisionError, match="--quantize int8 --calibration-images"):
        Session(plain, precision="int8")
    tool = load_export_tool()
    for extra, message in (
        (["--quantize", "int8"], "go together"),
        (["--quantize", "int8", "--calibration-images", str(tmp_path / "none*.png")],
         "--calibration-images .*none.*matches no"),
    ):  # fmt: skip
        output = tmp_path / "never"
        with pytest.raises(SystemExit, match=message):
            tool.main(["--config-file", DEMO_CONFIG, "--output", str(output), *extra])
        assert not output.exists()  # refused before anything was exported
    metadata["precisions"] = {"int8": {"models": {"openvino": "../elsewhere.onnx"}}}
    (plain / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelFolderError, match="precisions.int8.models.openvino"):
        Session(plain)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graph_outputs_are_checked_against_metadata_when_the_session_opens(
    quantized, tmp_path, backend
):
    """The exporter declares the semantic channels and box width in the graph; a class table of
    another length, or another output list, fails at open with both files named."""
    model_dir, _, _ = quantized
    session = Session(model_dir, backend=backend)
    classes = len(session.metadata["classes"])
    assert session._run.declared_outputs[0][1][0] == classes
    assert session._run.declared_outputs[1][1][1] == 4
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(model_dir / "model.onnx", broken)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    metadata.pop("precisions")
    extra = dict(metadata["classes"][0], channel=classes, dataset_id=1000, name="extra")
    longer = dict(metadata, classes=metadata["classes"] + [extra])
    (broken / "metadata.json").write_text(json.dumps(longer))
    with pytest.raises(
        ModelFolderError, match=rf"size {classes} on axis 0; expected {classes + 1}"
    ):
        Session(broken, backend=backend)
    renamed = dict(metadata, outputs=["logits", *metadata["outputs"][1:]])
    (broken / "metadata.json").write_text(json.dumps(renamed))
    with pytest.raises(ModelFolderError, match="metadata.json 'outputs' lists"):
        Session(broken, backend=backend)
