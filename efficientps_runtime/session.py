"""Run an exported EfficientPS (model.onnx + metadata.json) with onnxruntime (or OpenVINO), NumPy
and OpenCV.

``Session(model_dir).predict(image)`` does what detectron2's DefaultPredictor and the PyTorch
model do around the graph: channel order, the shortest-edge resize to the test size (Pillow's
bilinear, as detectron2's ResizeTransform), the resize of the semantic logits and boxes back to
the image's size, and the panoptic fusion.
"""

import json
import os
from dataclasses import dataclass, field
from typing import List

import numpy as np
from PIL import Image

from .fusion import PanopticFusion
from .fusion_params import FusionParams, FusionSettingError

# 2: the learned fusion's "quality" replaced "learned_weights" (re-export older folders).
METADATA_VERSION = 2
METADATA_KEYS = ("input", "classes", "stuff_channels", "thing_channels", "fusion", "outputs")


class ModelFolderError(ValueError):
    """The model folder or its metadata is not what the exporter writes."""


class InputImageError(ValueError):
    """An image that is not (H, W, 3) uint8."""


class GraphOutputError(RuntimeError):
    """The backend returned outputs that the exported graph cannot have produced."""


def read_metadata(model_dir):
    """metadata.json of an exported model, validated (``check_metadata``) when it is read."""
    path = os.path.join(model_dir, "metadata.json")
    if not os.path.isfile(path):
        raise ModelFolderError(
            f"{path}: no metadata.json; expected a folder written by tools/export_model.py "
            "(model.onnx + metadata.json)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{path}: not valid JSON ({error})") from error
    check_metadata(metadata, path)
    return metadata


def write_metadata(metadata, model_dir):
    """metadata.json of an export folder (the exporter's and the int8 quantizer's writer)."""
    path = os.path.join(model_dir, "metadata.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1)
    return path


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(ok, path, key, expected, value):
    if not ok:
        raise ModelFolderError(f"{path}: {key} is {value!r:.60}; expected {expected}")


def check_metadata(metadata, path="metadata.json"):
    """Every key the runtime reads, its type, and the tables' lengths against each other; a
    broken file fails here, naming the key, not later inside ``predict``."""
    _expect(isinstance(metadata, dict), path, "the file", "a JSON object", metadata)
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise ModelFolderError(f"{path}: missing keys {missing}")
    if metadata.get("format_version") != METADATA_VERSION:
        raise ModelFolderError(
            f"{path}: format_version {metadata.get('format_version')!r}; this runtime reads "
            f"{METADATA_VERSION}"
        )
    _expect(isinstance(metadata.get("model", ""), str), path, "model", "a file name", None)
    spec = metadata["input"]
    _expect(isinstance(spec, dict), path, "input", "an object", spec)
    order = spec.get("channel_order")
    _expect(order in ("BGR", "RGB"), path, "input.channel_order", "'BGR' or 'RGB'", order)
    for key in ("min_size_test", "max_size_test"):
        value = spec.get(key)
        _expect(_integer(value) and value >= 0, path, f"input.{key}", "an integer >= 0", value)
    classes = metadata["classes"]
    _expect(isinstance(classes, list) and classes, path, "classes", "a non-empty list", classes)
    for index, entry in enumerate(classes):
        where = f"classes[{index}]"
        _expect(isinstance(entry, dict), path, where, "an object", entry)
        for key, test, expected in (
            ("channel", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
            ("dataset_id", _integer, "an integer"),
            ("name", lambda v: isinstance(v, str), "a string"),
            ("isthing", lambda v: isinstance(v, bool), "true or false"),
        ):
            _expect(test(entry.get(key)), path, f"{where}.{key}", expected, entry.get(key))
    channels = {entry["channel"] for entry in classes}
    _expect(len(channels) == len(classes), path, "classes", "one entry per channel", channels)
    for key in ("stuff_channels", "thing_channels"):
        value = metadata[key]
        ok = isinstance(value, list) and all(_integer(c) and c in channels for c in value)
        _expect(ok, path, key, "a list of channels that 'classes' lists", value)
    overlap = set(metadata["stuff_channels"]) & set(metadata["thing_channels"])
    _expect(not overlap, path, "stuff_channels/thing_channels", "disjoint lists", overlap)
    _check_fusion(metadata["fusion"], len(metadata["thing_channels"]), path)
    _expect(isinstance(metadata["outputs"], list), path, "outputs", "a list", metadata["outputs"])
    _check_precisions(metadata.get("precisions", {}), path)


def _check_precisions(precisions, path):
    """``precisions``: reduced-precision copies of the graph (tools/export_model.py --quantize)."""
    _expect(isinstance(precisions, dict), path, "precisions", "an object", precisions)
    for name, entry in precisions.items():
        _expect(
            name in MODEL_PRECISIONS, path, "precisions", f"keys among {MODEL_PRECISIONS}", name
        )
        _expect(isinstance(entry, dict), path, f"precisions.{name}", "an object", entry)
        models = entry.get("models")
        ok = isinstance(models, dict) and set(models) <= set(BACKENDS)
        _expect(ok, path, f"precisions.{name}.models", f"an object with keys among {BACKENDS}",
                models)  # fmt: skip
        for backend, model in models.items():
            ok = isinstance(model, str) and model and os.path.basename(model) == model
            key = f"precisions.{name}.models.{backend}"
            _expect(ok, path, key, "a file name in the folder", model)


def _check_fusion(fusion, num_things, path):
    try:
        FusionParams.from_metadata(fusion, num_things)
    except FusionSettingError as error:
        raise ModelFolderError(f"{path}: {error}") from error


def resized_shape(height, width, min_size, max_size):
    """detectron2's ResizeShortestEdge output (height, width) for one test size."""
    if min_size == 0:
        return height, width
    scale = min_size * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = min_size * 1.0, scale * width
    else:
        new_h, new_w = scale * height, min_size * 1.0
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def checked_resized_shape(height, width, min_size, max_size):
    """``resized_shape``, refusing an image so elongated that a side would round to 0 pixels
    (the PyTorch predictor and the runtime take the same decision through this)."""
    new_h, new_w = resized_shape(height, width, min_size, max_size)
    if min(new_h, new_w) < 1:
        raise InputImageError(
            f"a {width}x{height} image (width x height) resizes to {new_w}x{new_h} at the test "
            f"size (shortest edge {min_size}, longest at most {max_size}): too elongated; crop "
            f"or pad it to an aspect ratio of at most {2 * max_size}:1"
        )
    return new_h, new_w


def resize_image(image, height, width):
    """uint8 (H, W, 3) -> (height, width, 3) as detectron2's ResizeTransform (Pillow bilinear)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_logits(logits, height, width):
    """(C, h, w) float32 -> (C, height, width), bilinear with half-pixel centres: the
    arithmetic of F.interpolate(align_corners=False), which detectron2's sem_seg_postprocess
    uses (OpenCV's resize rounds its weights to fixed point: 4e-5 off)."""
    if logits.shape[1:] == (height, width):
        return logits
    rows = _linear_taps(logits.shape[1], height)
    cols = _linear_taps(logits.shape[2], width)
    out = _lerp(logits, rows, axis=1)
    return _lerp(out, cols, axis=2)


def _linear_taps(in_size, out_size):
    """Source indices and weights of each output position (PyTorch's float32 arithmetic)."""
    scale = np.float32(in_size / out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    source = np.maximum(source, np.float32(0))
    low = source.astype(np.int64)  # floor: source >= 0
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low.astype(np.float32)
    return low, high, np.float32(1) - frac, frac


def _lerp(array, taps, axis):
    low, high, w_low, w_high = taps
    shape = [1] * array.ndim
    shape[axis] = -1
    return np.take(array, low, axis=axis) * w_low.reshape(shape) + np.take(
        array, high, axis=axis
    ) * w_high.reshape(shape)


@dataclass
class GraphOutputs:
    """The graph's outputs for one image, at the size the graph saw."""

    sem_logits: np.ndarray  # (C, h, w)
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1
    scores: np.ndarray  # (N,)
    classes: np.ndarray  # (N,) thing index
    mask_logits: np.ndarray  # (N, M, M)


@dataclass
class Prediction:
    """One image's panoptic output and what it was made from (at the image's size)."""

    panoptic: np.ndarray  # (H, W) int32 segment ids, 0 = void
    segments_info: List[dict]
    sem_logits: np.ndarray = field(repr=False)
    detections: GraphOutputs = field(repr=False)


BACKENDS = ("onnxruntime", "openvino")
# What the graph computes in. float32 unless asked otherwise: OpenVINO's CPU plugin would
# otherwise pick bfloat16 by itself on CPUs with AVX512-BF16 or AMX (Intel Xeon 4th gen+, AMD
# Zen 4+), and results would depend on the machine.
PRECISIONS = ("fp32", "bf16", "int8")
# Precisions that are a graph of their own in the folder (metadata "precisions"), not a setting.
MODEL_PRECISIONS = ("int8",)


class PrecisionError(ValueError):
    """A precision the backend or this CPU cannot compute natively."""


class Session:
    """An exported EfficientPS, ready to predict.

    Args:
        model_dir: folder with model.onnx and metadata.json (tools/export_model.py).
        backend: "onnxruntime" (default) or "openvino" (its CPU plugin; ``pip install openvino``).
        providers: onnxruntime execution providers (default: CPU).
        threads: inference threads (default: the backend's, one per core).
        precision: "fp32" (default, on every CPU and backend), "bf16" (OpenVINO on a CPU
            with native bfloat16: AVX512-BF16 or AMX; refused elsewhere, never emulated) or
            "int8" (the folder's int8 graph, either backend: tools/export_model.py --quantize
            int8; its operations that stay float compute in float32).
    """

    def __init__(
        self, model_dir, backend="onnxruntime", providers=None, threads=None, precision="fp32"
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; expected one of {BACKENDS}")
        if precision not in PRECISIONS:
            raise PrecisionError(f"precision={precision!r}; expected one of {PRECISIONS}")
        if precision == "bf16" and backend != "openvino":
            raise PrecisionError(
                f"precision={precision!r} needs backend='openvino' (onnxruntime's CPU provider "
                "computes this graph in float32 only)"
            )
        self.metadata = read_metadata(model_dir)
        model_path = os.path.join(model_dir, self._model_file(precision, backend, model_dir))
        if not os.path.isfile(model_path):
            raise ModelFolderError(
                f"{model_path}: the ONNX model named by metadata.json is missing"
            )
        try:
            if backend == "openvino":
                # An int8 graph's float parts compute in float32, as onnxruntime's do.
                graph_precision = "bf16" if precision == "bf16" else "fp32"
                self._run = _openvino_graph(model_path, threads, graph_precision)
            else:
                self._run = _onnxruntime_graph(model_path, providers, threads)
        except (ImportError, PrecisionError):
            raise
        except Exception as error:  # the backends raise their own Fail/InvalidGraph types
            raise ModelFolderError(f"{model_path}: {backend} cannot load it ({error})") from error
        problem = _declared_output_problem(self._run.declared_outputs, self.metadata)
        if problem:
            raise ModelFolderError(f"{model_path} and its metadata.json disagree: {problem}")
        self.backend = backend
        self.precision = precision
        self.input = self.metadata["input"]
        self.fusion = PanopticFusion.from_metadata(self.metadata)
        self.classes = {c["channel"]: c for c in self.metadata["classes"]}

    def _model_file(self, precision, backend, model_dir):
        if precision not in MODEL_PRECISIONS:
            return self.metadata.get("model", "model.onnx")
        models = self.metadata.get("precisions", {}).get(precision, {}).get("models", {})
        if backend not in models:
            raise PrecisionError(
                f"precision={precision!r}: {model_dir} has no {precision} graph for {backend} "
                f"(metadata.json lists none); make one with tools/export_model.py --quantize "
                f"{precision} --calibration-images GLOB"
            )
        return models[backend]

    def run_graph(self, image_rgb_or_bgr, channel_order="BGR"):
        """The graph on one image after the test-size resize: (GraphOutputs, resized size)."""
        image = graph_input(image_rgb_or_bgr, self.input, channel_order)
        outputs = GraphOutputs(*self._run(image))
        self.check_outputs(outputs)
        return outputs, image.shape[:2]

    def check_outputs(self, outputs):
        """Shapes, detection counts and class ids as the graph defines them; a backend that
        returns anything else (garbage rows, uninitialised class ids) fails here, by name."""
        problem = _output_problem(outputs, len(self.metadata["classes"]),
                                  len(self.metadata["thing_channels"]))  # fmt: skip
        if problem:
            raise GraphOutputError(f"{self.backend} returned {problem}")

    def predict(self, image, channel_order="BGR"):
        """Panoptic segmentation of one (H, W, 3) uint8 image (OpenCV's BGR by default).

        Returns (ids (H, W) int32, segments_info): each segment's "id" in ``ids``,
        "category_id" in the dataset's ids, "category_name", "isthing", "area" and, for
        things, "score".
        """
        prediction = self.predict_full(image, channel_order)
        return prediction.panoptic, prediction.segments_info

    def predict_full(self, image, channel_order="BGR"):
        """``predict`` with the logits and detections it fused (a ``Prediction``)."""
        outputs, (height, width) = self.run_graph(image, channel_order)
        out_h, out_w = np.asarray(image).shape[:2]
        sem_logits = resize_logits(outputs.sem_logits, out_h, out_w)
        detections = _rescaled_detections(outputs, (height, width), (out_h, out_w))
        panoptic, segments = self.fusion(
            sem_logits,
            detections.boxes,
            detections.scores,
            detections.classes,
            detections.mask_logits,
        )
        return Prediction(panoptic, self.dataset_segments(segments), sem_logits, detections)

    def dataset_segments(self, segments):
        """Fusion segments (semantic channels) -> the dataset's category ids and names."""
        records = []
        for s in segments:
            entry = self.classes[s["category_id"]]
            record = {
                "id": int(s["id"]),
                "category_id": int(entry["dataset_id"]),
                "category_name": entry["name"],
                "isthing": bool(s["isthing"]),
                "area": int(s["area"]),
            }
            if "score" in s:
                record["score"] = float(s["score"])
            records.append(record)
        return records


def _onnxruntime_graph(model_path, providers, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        model_path, options, providers=providers or ["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def run(image):
        return session.run(None, {name: image})

    run.declared_outputs = [
        ({output.name}, [d if isinstance(d, int) else None for d in output.shape])
        for output in session.get_outputs()
    ]
    return run


OPENVINO_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def _openvino_graph(model_path, threads, precision="fp32"):
    try:
        import openvino
    except ImportError as error:
        raise ImportError(
            "backend 'openvino' needs the openvino package: pip install openvino"
        ) from error
    core = openvino.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise PrecisionError(
            "precision='bf16': this CPU has no native bfloat16 (AVX512-BF16 or AMX); OpenVINO "
            "would emulate it, slower than float32. Use precision='fp32'"
        )
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION_HINTS[precision],
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(model_path), "CPU", config)
    outputs = list(compiled.outputs)

    def run(image):
        results = compiled([image])
        return [results[output] for output in outputs]

    run.inference_precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    run.declared_outputs = [
        (
            set(output.get_names()),  # OpenVINO keeps every name the tensor had
            [d.get_length() if d.is_static else None for d in output.get_partial_shape()],
        )
        for output in outputs
    ]
    return run


# What each graph output is, by its dimensions: None where the size depends on the image.
OUTPUT_DIMENSIONS = {
    "sem_logits": ("classes", None, None),
    "boxes": (None, 4),
    "scores": (None,),
    "classes": (None,),
    "mask_logits": (None, None, None),
}


def _declared_output_problem(declared, metadata):
    """The graph's declared outputs (each: its set of names, its dimensions) against
    metadata.json: the names, in order, and the sizes the graph fixes (its semantic channels
    against the class table), or None."""
    listed = metadata["outputs"]
    if len(declared) != len(listed) or any(n not in d for n, (d, _) in zip(listed, declared)):
        names = [sorted(names)[0] for names, _ in declared]
        return f"graph outputs {names}; metadata.json 'outputs' lists {listed}"
    sizes = {"classes": len(metadata["classes"])}
    for name, (_, shape) in zip(listed, declared):
        expected = OUTPUT_DIMENSIONS.get(name)
        if expected is None:
            return f"graph output {name!r}: not one of {list(OUTPUT_DIMENSIONS)}"
        if len(shape) != len(expected):
            return f"graph output {name!r} has {len(shape)} dimensions; expected {len(expected)}"
        for axis, (got, want) in enumerate(zip(shape, expected)):
            want = sizes.get(want, want)
            if got is not None and want is not None and got != want:
                where = " (len(classes))" if expected[axis] == "classes" else ""
                return (
                    f"graph output {name!r} has size {got} on axis {axis}; expected {want}{where}"
                )
    return None


def _output_problem(outputs, num_classes, num_things):
    """What is wrong with one image's graph outputs, or None."""
    sem = np.asarray(outputs.sem_logits)
    if sem.ndim != 3 or sem.shape[0] != num_classes:
        return f"semantic logits of shape {sem.shape}; expected ({num_classes}, H, W)"
    count = len(outputs.scores)
    shapes = {
        "boxes": (np.shape(outputs.boxes), (count, 4)),
        "classes": (np.shape(outputs.classes), (count,)),
        "mask logits": (np.shape(outputs.mask_logits)[:1], (count,)),
    }
    for name, (shape, expected) in shapes.items():
        if tuple(shape) != expected:
            return f"{name} of shape {tuple(shape)} for {count} scores; expected {expected}"
    classes = np.asarray(outputs.classes)
    if count and (classes.min() < 0 or classes.max() >= num_things):
        return f"thing classes {sorted(set(classes.tolist()))[:5]}; expected 0..{num_things - 1}"
    if count and not (np.isfinite(outputs.boxes).all() and np.isfinite(outputs.scores).all()):
        return "non-finite boxes or scores"
    return None


def graph_input(image, input_spec, channel_order="BGR"):
    """What the graph takes for one (H, W, 3) uint8 image: the model's channel order, resized
    to the test size as detectron2's DefaultPredictor does. ``input_spec``: metadata["input"]."""
    image = checked_image(image)
    if channel_order not in ("BGR", "RGB"):
        raise InputImageError(f"channel_order={channel_order!r}; expected 'BGR' or 'RGB'")
    if channel_order != input_spec["channel_order"]:
        image = image[:, :, ::-1]
    height, width = checked_resized_shape(
        *image.shape[:2], input_spec["min_size_test"], input_spec["max_size_test"]
    )
    return np.ascontiguousarray(resize_image(np.ascontiguousarray(image), height, width))


def checked_image(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputImageError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputImageError(f"expected an (H, W, 3) colour image, got shape {image.shape}")
    if min(image.shape[:2]) < 1:
        raise InputImageError(f"empty image of shape {image.shape}")
    return image


def _rescaled_detections(outputs, graph_size, output_size):
    """detectron2's detector_postprocess: boxes scaled to the output size, clipped, and
    detections whose box became empty dropped."""
    (height, width), (out_h, out_w) = graph_size, output_size
    boxes = outputs.boxes.astype(np.float32).copy()
    if (height, width) != (out_h, out_w):
        boxes[:, 0::2] *= np.float32(out_w / width)
        boxes[:, 1::2] *= np.float32(out_h / height)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, out_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, out_h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return GraphOutputs(
        outputs.sem_logits,
        boxes[keep],
        outputs.scores[keep],
        outputs.classes[keep],
        outputs.mask_logits[keep],
    )
