"""int8 post-training static quantization of an exported EfficientPS, calibrated on your images.

    quantize_int8("DIR", ["calib/a.png", ...])   # tools/export_model.py --quantize int8

writes an int8 graph per backend next to the float32 ``model.onnx`` and records them in
``metadata.json`` (``precisions.int8``); ``Session("DIR", precision="int8")`` runs the one of its
backend. The weights of every Conv and Gemm (backbone, 2-way FPN, semantic head, RPN, box and
mask heads) become int8 per output channel (symmetric), activations uint8 per tensor
(asymmetric), with ranges measured once by running the float32 graph on the calibration images
as the runtime feeds them (channel order, test-size resize). Everything else (ROIAlign, NMS,
top-k, resizes, the box decoding) stays float32. The graphs are ONNX's QDQ form
(QuantizeLinear/DequantizeLinear around float ops), placed as each backend needs them:

- onnxruntime (``model_int8_onnxruntime.onnx``): Q/DQ on the inputs *and* outputs of every
  Conv/Gemm, which onnxruntime fuses into QLinearConv/QGemm; with the inputs only it runs the
  layers in float32 after dequantizing (no faster than float32).
- OpenVINO (``model_int8_openvino.onnx``): Q/DQ on the inputs only, where NNCF (OpenVINO's own
  quantizer) places them. With Q/DQ on the outputs too, OpenVINO's CPU plugin mis-computed the
  2-way FPN's output convs (Q/DQ -> LeakyReLU -> float consumers): PQ 52 against onnxruntime's
  66 on the same calibration (benchmarks/precision.py).

Needs the ``onnx`` package besides onnxruntime (onnxruntime's quantization tools); running the
quantized model needs only what the runtime needs.
"""

import os
import tempfile

import numpy as np

from .inputs import read_image
from .session import ModelFolderError, graph_input, read_metadata, write_metadata

QUANTIZED_OPS = ("Conv", "Gemm")
# Per backend: its int8 graph's file, and whether the quantized layers' outputs get Q/DQ too.
INT8_GRAPHS = {
    "onnxruntime": ("model_int8_onnxruntime.onnx", True),
    "openvino": ("model_int8_openvino.onnx", False),
}


class CalibrationError(ValueError):
    """Calibration images that cannot calibrate: none, or none on which the model detects
    anything (the mask head then has no ranges). An unreadable image is the runtime's
    UnreadableInputError, naming the file."""


def quantize_int8(model_dir, calibration_paths, progress=None):
    """Quantize ``model_dir``/model.onnx to int8 with ranges from ``calibration_paths``.

    Args:
        model_dir: an export folder (model.onnx + metadata.json).
        calibration_paths: image files (any size, like those the model will see); each
            quantized activation's range is the smallest and largest value it takes on them.
        progress: optional wrapper around an iterable (e.g. tqdm) to show calibration progress.

    Returns {backend: path of its int8 graph}; metadata.json gains ``precisions.int8``.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    paths = list(calibration_paths)
    if not paths:
        raise CalibrationError("no calibration images: give at least one image")
    metadata = read_metadata(model_dir)
    source = os.path.join(model_dir, metadata["model"])
    if not os.path.isfile(source):
        raise ModelFolderError(f"{source}: the ONNX model named by metadata.json is missing")
    model = onnx.load(source)
    _own_initializers(model)
    targets = {}
    with tempfile.TemporaryDirectory() as scratch:
        prepared = os.path.join(scratch, "prepared.onnx")
        # onnxruntime's recommended preparation: constant folding (the semantic classifier's
        # weight is split in four per level in the graph) and ONNX shape inference. Its
        # symbolic shape inference does not know detectron2's data-dependent shapes: skipped.
        quant_pre_process(model, prepared, skip_symbolic_shape=True)
        name = model.graph.input[0].name
        images = _graph_inputs(paths, name, metadata["input"], progress or (lambda p: p))
        ranges = os.path.join(scratch, "ranges.json")
        _save_ranges(_minmax_ranges(prepared, images), ranges)
        for backend, (name, quantize_outputs) in INT8_GRAPHS.items():
            targets[backend] = os.path.join(model_dir, name)
            _quantize(prepared, targets[backend], quantize_outputs, ranges)
    metadata.setdefault("precisions", {})["int8"] = {
        "models": {backend: name for backend, (name, _) in INT8_GRAPHS.items()},
        "calibration_images": len(paths),
        "calibration_method": "minmax",
        "quantized_ops": list(QUANTIZED_OPS),
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
    }
    write_metadata(metadata, model_dir)
    return targets


def _graph_inputs(paths, name, input_spec, progress):
    """The calibration images as the runtime feeds them to the graph (input ``name``), one
    feed dict each."""
    for path in progress(paths):
        yield {name: graph_input(read_image(path), input_spec, "BGR")}


def _minmax_ranges(model_path, feeds):
    """(min, max) of every Conv/Gemm input and output over the calibration images.

    onnxruntime's calibrator appends its min/max nodes at the end of the graph, so every
    calibrated tensor stays alive until the last layer ran: 24 GB of RSS for B5 at 1024x2048
    (7.7 GB at 512x1024, export included). Here each tensor's reductions follow its producer and
    run right after it, and the tensor is freed as in plain inference.
    """
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    model = onnx.load(model_path)
    constants = {t.name for t in model.graph.initializer}
    wanted = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            for tensor in (node.input[0], node.output[0]):
                if tensor not in constants:
                    wanted.setdefault(tensor, (f"{tensor}:min", f"{tensor}:max"))
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        for tensor in node.output:
            if tensor in wanted:
                low, high = wanted[tensor]  # keepdims: a reduction of an empty tensor is valid
                nodes.append(helper.make_node("ReduceMin", [tensor], [low], keepdims=1))
                nodes.append(helper.make_node("ReduceMax", [tensor], [high], keepdims=1))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    names = [name for pair in wanted.values() for name in pair]
    model.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names
    )
    options = onnxruntime.SessionOptions()
    # The default order ran the reductions late again (3.9 GB RSS for B5 at 512x1024, 1.2 GB
    # with the priority-based order, which frees each tensor after its reductions).
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    ranges = {}
    for feed in feeds:
        values = dict(zip(names, session.run(names, feed)))
        for tensor, (low, high) in wanted.items():
            low_value, high_value = values[low], values[high]
            # No detection: the mask head's tensors are empty, their reductions +-inf.
            finite = np.isfinite(low_value).all() and np.isfinite(high_value).all()
            if low_value.size == 0 or not finite:
                continue
            found = (float(low_value.min()), float(high_value.max()))
            known = ranges.get(tensor, found)
            ranges[tensor] = (min(known[0], found[0]), max(known[1], found[1]))
    missing = [tensor for tensor in wanted if tensor not in ranges]
    if missing:
        raise CalibrationError(
            f"the calibration images never reached {len(missing)} quantized layers (e.g. "
            f"{missing[0]}): give images in which the model detects something"
        )
    return ranges


def _save_ranges(ranges, path):
    """The ranges in onnxruntime's calibration cache, which quantize_static reads."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    data = {
        tensor: (np.array(low, np.float32), np.array(high, np.float32))
        for tensor, (low, high) in ranges.items()
    }
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def _quantize(source, target, quantize_outputs, ranges):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        source,
        target,
        None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=ranges,
        extra_options={
            "OpTypesToExcludeOutputQuantization": [] if quantize_outputs else list(QUANTIZED_OPS)
        },
    )
    if not quantize_outputs:
        _float_for_other_readers(target)


def _float_for_other_readers(path):
    """Q/DQ on the quantized layers' inputs only: the quantizer hands every reader of a
    quantized tensor the dequantized copy; the readers that are not quantized layers (a
    residual Add, a resize) get the float tensor back, as in NNCF's placement."""
    import onnx

    model = onnx.load(path)
    producers = {output: node for node in model.graph.node for output in node.output}
    dequantized = {}  # DequantizeLinear output -> the float tensor its QuantizeLinear read
    for node in model.graph.node:
        quantize = producers.get(node.input[0])
        if node.op_type == "DequantizeLinear" and quantize is not None:
            if quantize.op_type == "QuantizeLinear":
                dequantized[node.output[0]] = quantize.input[0]
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            continue
        for index, tensor in enumerate(node.input):
            if tensor in dequantized:
                node.input[index] = dequantized[tensor]
    onnx.save(model, path)


def _own_initializers(model):
    """Give every Conv/Gemm its own constant weights and bias.

    The ONNX exporter stores equal tensors once and reads the copies through ``Identity``
    nodes (zero biases of untrained layers, for example); the quantizer needs each layer's
    parameters as initializers of their own, so each Identity of an initializer becomes one.
    """
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(np.copy(array), node.output[0]))
            continue
        kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
