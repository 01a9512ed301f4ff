"""Export EfficientPS as one ONNX graph plus the metadata a torch-free runtime needs.

What is inside the graph (``ExportableEfficientPS``): uint8 image (H, W, 3) in the config's
channel order, already resized to the test size -> float, normalisation, zero padding to the
backbone's size divisibility, EfficientNet + 2-way FPN (norms folded into the convs), the
semantic head, the RPN with its NMS, the box head with ROIAlign and per-class NMS, the mask
head. Outputs: semantic logits (C, H, W) at the input's size, and per detection its box (in
input pixels), score, thing class and the mask logits of its class (M x M).

What is not (done by ``efficientps_runtime`` with NumPy/OpenCV, exactly as the PyTorch model
does it): the resize to the test size (detectron2's ResizeShortestEdge, Pillow's bilinear), the
resize of the semantic logits and boxes back to the image's size, and the panoptic fusion.

The graph is recorded with the TorchScript-based ONNX exporter (``dynamo=False``): it keeps
detectron2's data-dependent steps (top-k, NMS, per-level ROI assignment) as ONNX ops. TF 'SAME'
padding is recorded for the sample's size, which is exact for every input because images are
padded to a multiple of 32 inside the graph, where every stride-2 conv sees an even size.
"""

import copy
import types
import warnings

import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torch.nn import functional as F
from torchvision.ops import nms

from efficientps_runtime.session import METADATA_VERSION

from .class_tables import channel_to_dataset_id
from .modeling import fold_for_export
from .modeling.meta_arch.efficientps import EfficientPS

OPSET = 17  # ROIAlign with aligned=True (ROIAlignV2) needs 16
INPUT_NAME = "image"
OUTPUT_NAMES = ("sem_logits", "boxes", "scores", "classes", "mask_logits")


class ExportError(ValueError):
    """A model or config the exporter cannot handle; the message names the key."""


class ExportableEfficientPS(nn.Module):
    """EfficientPS from a uint8 (H, W, 3) image to tensors only (what a graph can return).

    Normalises and pads like ``EfficientPS.preprocess_image`` (zeros after normalisation, to
    the backbone's size divisibility), then runs ``EfficientPS.inference_on_images``. The
    padded size is computed with a float ceil rather than detectron2's integer division:
    OpenVINO evaluates that exported integer ``Div`` as a float one (a 128x256 image became
    159x287), a float ``Ceil`` means the same in every runtime.
    """

    def __init__(self, model: EfficientPS):
        super().__init__()
        self.model = model
        self.divisibility = int(model.backbone.size_divisibility)
        self.train(model.training)  # exporters restore the wrapper's mode on every child

    def forward(self, image):
        model = self.model
        chw = image.permute(2, 0, 1).to(torch.float32)
        chw = (chw - model.pixel_mean) / model.pixel_std
        height, width = chw.shape[-2], chw.shape[-1]
        padding = [
            0,
            _rounded_up(width, self.divisibility) - width,
            0,
            _rounded_up(height, self.divisibility) - height,
        ]
        images = ImageList(F.pad(chw, padding)[None], [(height, width)])
        sem_logits, (detections,) = model.inference_on_images(images)
        return (
            sem_logits[0, :, :height, :width],
            detections.pred_boxes.tensor,
            detections.scores,
            detections.pred_classes,
            detections.pred_mask_logits[:, 0],
        )


def _rounded_up(length, divisor):
    """``length`` rounded up to a multiple of ``divisor``; traced sizes (0-d tensors under the
    ONNX tracer) through a float ceil, which every runtime evaluates alike."""
    if isinstance(length, torch.Tensor):
        return (torch.ceil(length.to(torch.float32) / divisor) * divisor).to(length.dtype)
    return -(-length // divisor) * divisor


def exportable_copy(model):
    """A folded eval-mode float32 copy of ``model`` wrapped for export (the model is untouched)."""
    if not isinstance(model, EfficientPS):
        raise ExportError(
            f"MODEL.META_ARCHITECTURE: the exporter handles EfficientPS, got {type(model).__name__}"
        )
    if not model.roi_heads.mask_on:
        raise ExportError("MODEL.MASK_ON: the panoptic fusion needs the mask head")
    model = copy.deepcopy(model).eval()
    model.inference_dtype = torch.float32  # reduced precision is not exported
    fold_for_export(model)
    predictor = model.roi_heads.box_predictor
    predictor.inference = types.MethodType(_box_inference_without_branches, predictor)
    return ExportableEfficientPS(model).eval()


def _box_inference_without_branches(predictor, predictions, proposals):
    """detectron2's ``FastRCNNOutputLayers.inference`` (score filter, per-class NMS, top k),
    the same numbers, recorded without a data-dependent branch.

    torchvision's ``batched_nms`` returns early for no boxes; exported, that is an ONNX ``If``
    whose empty branch OpenVINO evaluates to one row (index 0): with no detection it then
    returned one row of uninitialised memory. Here the NMS runs on the empty input too (an
    empty result in every runtime).
    """
    if len(proposals) == 1:
        # detectron2 splits the batch's rows per image by len(proposals), which a trace
        # records as a constant (the sample's proposal count): an image with fewer anchors,
        # e.g. 30x7000, then failed in the graph's Split. One image needs no split.
        logits, deltas = predictions
        sigmoid = getattr(predictor, "use_sigmoid_ce", False)  # detectron2 main's option
        probabilities = logits.sigmoid() if sigmoid else F.softmax(logits, dim=-1)
        anchors = proposals[0].proposal_boxes.tensor
        boxes = [predictor.box2box_transform.apply_deltas(deltas, anchors)]
        scores = [probabilities]
    else:
        boxes = predictor.predict_boxes(predictions, proposals)
        scores = predictor.predict_probs(predictions, proposals)
    results = [
        _detections_of_one_image(
            b, s, p.image_size, predictor.test_score_thresh, predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        for b, s, p in zip(boxes, scores, proposals)
    ]  # fmt: skip
    return [r[0] for r in results], [r[1] for r in results]


def _detections_of_one_image(boxes, scores, image_size, score_thresh, nms_thresh, topk):
    scores = scores[:, :-1]  # the last column is the background
    per_class = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_size)
    boxes = boxes.tensor.view(-1, per_class, 4)
    confident = scores > score_thresh
    indices = confident.nonzero()  # (row, class) of each candidate
    boxes = boxes[indices[:, 0], 0] if per_class == 1 else boxes[confident]
    scores = scores[confident]
    # Per-class NMS as one NMS: boxes of different classes moved apart (torchvision's trick);
    # the 0 joined to the maximum keeps the reduction defined for no boxes.
    largest = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = indices[:, 1].to(boxes) * (largest + 1)
    keep = nms(boxes.float() + offsets[:, None], scores, nms_thresh)
    if topk >= 0:
        keep = keep[:topk]
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = scores[keep]
    result.pred_classes = indices[keep, 1]
    return result, indices[keep, 0]


def export_onnx(model, sample_image, path, opset=OPSET):
    """Write ``model`` (EfficientPS) as ONNX to ``path``; ``sample_image`` (H, W, 3) uint8."""
    if opset < 16 and _uses_aligned_roi_align(model):
        raise ExportError(
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE / MODEL.ROI_MASK_HEAD.POOLER_TYPE: ROIAlignV2 "
            f"(aligned) needs ONNX opset >= 16, asked for {opset}"
        )
    wrapper = exportable_copy(model)
    # The tracer warns at every Python int/bool taken from a tensor; which of those matter is
    # settled by the tests at other input sizes, so the warnings are only noise for users.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            wrapper,
            (torch.as_tensor(sample_image),),
            path,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                INPUT_NAME: {0: "height", 1: "width"},
                "sem_logits": {1: "height", 2: "width"},
                "boxes": {0: "detections"},
                "scores": {0: "detections"},
                "classes": {0: "detections"},
                "mask_logits": {0: "detections"},
            },
            opset_version=opset,
            dynamo=False,
        )
    _declare_output_sizes(path, wrapper.model)
    return wrapper


def _declare_output_sizes(path, model):
    """Write the sizes the graph fixes into its declared outputs (the tracer leaves them
    symbolic): the semantic channels and the 4 box coordinates. The runtime checks them
    against metadata.json when it opens the folder."""
    import onnx

    graph = onnx.load(path)
    sizes = {"sem_logits": {0: model.class_tables.num_classes}, "boxes": {1: 4}}
    for output in graph.graph.output:
        for axis, size in sizes.get(output.name, {}).items():
            dim = output.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_value = size
    onnx.save(graph, path)


def _uses_aligned_roi_align(model):
    poolers = [model.roi_heads.box_pooler, getattr(model.roi_heads, "mask_pooler", None)]
    return any(
        getattr(level, "aligned", False)
        for pooler in poolers
        if pooler is not None
        for level in pooler.level_poolers
    )


def export_metadata(cfg, model):
    """Everything the runtime needs besides the graph, as a JSON-serialisable dict."""
    dataset = (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN or [None])[0]
    if dataset is None:
        raise ExportError("DATASETS.TEST / DATASETS.TRAIN: a dataset names the classes")
    metadata = MetadataCatalog.get(dataset)
    tables = model.class_tables
    fusion = model.panoptic_fusion
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise ExportError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: the runtime reads RGB or BGR images")
    try:
        to_dataset_id = channel_to_dataset_id(metadata)
        names = list(metadata.stuff_classes)
        classes = [
            {
                "channel": channel,
                "dataset_id": int(to_dataset_id[channel]),
                "name": names[channel],
                "isthing": channel in tables.thing_channels,
                "color": _class_colour(metadata, channel, tables),
            }
            for channel in range(tables.num_classes)
        ]
    except (AttributeError, KeyError, IndexError) as error:
        raise ExportError(
            f"DATASETS.TEST: dataset {dataset!r} has no panoptic metadata for the model's "
            f"{tables.num_classes} classes ({type(error).__name__}: {error})"
        ) from error
    return {
        "format_version": METADATA_VERSION,
        "model": "model.onnx",
        "dataset": dataset,
        "input": {
            "name": INPUT_NAME,
            "layout": "HWC",
            "dtype": "uint8",
            "channel_order": cfg.INPUT.FORMAT,
            "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
            "resize": "shortest edge, Pillow bilinear (detectron2's ResizeShortestEdge)",
            "size_divisibility": int(model.backbone.size_divisibility),
        },
        "outputs": list(OUTPUT_NAMES),
        "stuff_channels": list(tables.stuff_channels),
        "thing_channels": list(tables.thing_channels),
        "classes": classes,
        "fusion": fusion.to_metadata(),
    }


def _class_colour(metadata, channel, tables):
    """[r, g, b] of a semantic channel from the dataset's metadata, or None.

    Registrations list thing colours either for every class (ours, detectron2's Cityscapes) or
    for the things only (COCO); stuff colours are listed for every class.
    """
    thing_colors = list(getattr(metadata, "thing_colors", None) or [])
    colour = None
    if channel in tables.thing_channels and thing_colors:
        index = channel
        if len(thing_colors) != tables.num_classes:
            index = list(tables.thing_channels).index(channel)
        colour = thing_colors[index]
    else:
        stuff_colors = list(getattr(metadata, "stuff_colors", None) or [])
        colour = stuff_colors[channel] if channel < len(stuff_colors) else None
    return None if colour is None else [int(c) for c in colour]
