"""The authors' released EfficientPS checkpoints (mmdetection v1 layout) as our state dicts.

The authors (DeepSceneSeg/EfficientPS) released Cityscapes and KITTI models as mmdetection v1
checkpoints: ``{"state_dict": ..., "meta": ...}`` with the modules of their ``EfficientPS``
detector. This module maps every tensor of that layout onto the model built from
``configs/*/efficientps_b5_official.yaml``. Their layout, as their code builds it (facts read
from their code; nothing of it is copied here):

======================================  =================================================
theirs                                  ours
======================================  =================================================
backbone.conv_stem / bn1                backbone.bottom_up.stem (+ .norm)
backbone.blocks.{stage}.{j}             backbone.bottom_up.res{2..5}.{pos} (stage j-th block)
  .conv_dw/.bn1, .conv_pw/.bn2          first stage (no expansion): depthwise, project
  .conv_pw/.bn1, .conv_dw/.bn2,         other stages: expand, depthwise, project
  .conv_pwl/.bn3
backbone.conv_head / bn2                backbone.bottom_up.res5.{last} (+ .norm)
neck.lateral_convs_top.{i}.conv/bn      backbone.lateral_top_down.{i} (finest first)
neck.lateral_convs_bottom.{i}.conv/bn   backbone.lateral_bottom_up.{3 - i} (stored coarsest
                                        first: their i = 0 reads the stride-32 map)
neck.fpn_convs.{i}.conv/bn              backbone.output_convs.{i} (regular 3x3, finest first)
semantic_head.lateral_convs_ss.{0,1}    sem_seg_head.dpc_32, dpc_16
  .convs.{b}.{depthwise,pointwise}_conv   .branches.{b}.{depthwise,pointwise}; .conv -> .project
semantic_head.lateral_convs_ls.{0,1}    sem_seg_head.lsfe_8, lsfe_4 (.convs.{i} -> .{i})
semantic_head.aligning_convs.{0,1}      sem_seg_head.mc_16_to_8, mc_8_to_4
semantic_head.conv_logits               sem_seg_head.predictor
rpn_head.rpn_conv / rpn_cls / rpn_reg   proposal_generator.rpn_head.conv / objectness_logits /
                                        anchor_deltas
bbox_head.shared_fcs.{0,1}              roi_heads.box_head.fc1, fc2
bbox_head.fc_cls (K + 1 classes)        roi_heads.box_predictor.cls_score: their class 0 is
                                        background, detectron2's is the last (K)
bbox_head.fc_reg (4 (K + 1) rows)       roi_heads.box_predictor.bbox_pred: background's 4 rows
                                        dropped (theirs regresses it, detectron2 does not)
mask_head.convs.{i}                     roi_heads.mask_head.mask_fcn{i + 1} (separable)
mask_head.upsample / conv_logits        roi_heads.mask_head.deconv / predictor (background
                                        channel 0 dropped)
======================================  =================================================

Every norm of their model is mapillary's in-place ABN, which scales by ``|weight| + eps``
instead of ``weight``; the converter stores ``|weight| + eps`` so that our BatchNorm computes the
same. ``eps`` is the layer's own: 1e-3 in the backbone (their EfficientNet port's TF value), 1e-5
elsewhere (mmdetection's default), which are also our layers' values.
"""

import logging
import os
import re
from collections import Counter, OrderedDict

import torch

from .engine.weight_files import WeightFileError, arrays_as_tensors, read_weight_file
from .modeling.backbone.efficientnet import efficientnet_block_args

logger = logging.getLogger(__name__)

BACKBONE_IABN_EPS = 1e-3
HEAD_IABN_EPS = 1e-5
NORM_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# Kinds of module: how their tensors become ours.
COPY, NORM, BOX_CLASSES, BOX_DELTAS, MASK_LOGITS = "copy", "norm", "cls", "deltas", "mask"

GROUPS = OrderedDict(
    [
        ("backbone.", "EfficientNet"),
        ("neck.", "2-way FPN"),
        ("semantic_head.", "semantic head"),
        ("rpn_head.", "RPN head"),
        ("bbox_head.", "box head"),
        ("mask_head.", "mask head"),
    ]
)


def _separable(theirs, ours, eps):
    """A DepthwiseSeparableConvModule (conv + iABN twice) -> our SeparableConv2d."""
    entries = {}
    for part in ("depthwise", "pointwise"):
        entries[f"{theirs}.{part}_conv.conv"] = (f"{ours}.{part}", COPY, None)
        entries[f"{theirs}.{part}_conv.bn"] = (f"{ours}.{part}.norm", NORM, eps)
    return entries


def _conv_module(theirs, ours, eps):
    """A ConvModule (conv + iABN) -> our conv_norm_act."""
    return {
        f"{theirs}.conv": (ours, COPY, None),
        f"{theirs}.bn": (f"{ours}.norm", NORM, eps),
    }


def _backbone_modules(efficientnet_name, block_positions):
    """Their geffnet EfficientNet's modules -> ours (``block_positions``: (tap, pos) per block)."""
    eps = BACKBONE_IABN_EPS
    ours = "backbone.bottom_up"
    entries = {
        "backbone.conv_stem": (f"{ours}.stem", COPY, None),
        "backbone.bn1": (f"{ours}.stem.norm", NORM, eps),
    }
    blocks, _, _ = efficientnet_block_args(efficientnet_name)
    index_in_stage = Counter()
    for (stage, args), (tap, pos) in zip(blocks, block_positions):
        theirs = f"backbone.blocks.{stage}.{index_in_stage[stage]}"
        index_in_stage[stage] += 1
        block = f"{ours}.{tap}.{pos}"
        if args.expand_ratio == 1:  # geffnet's DepthwiseSeparableConv
            layers = (("conv_dw", "bn1", "depthwise"), ("conv_pw", "bn2", "project"))
        else:  # geffnet's InvertedResidual
            layers = (
                ("conv_pw", "bn1", "expand"),
                ("conv_dw", "bn2", "depthwise"),
                ("conv_pwl", "bn3", "project"),
            )
        for conv, norm, name in layers:
            entries[f"{theirs}.{conv}"] = (f"{block}.{name}", COPY, None)
            entries[f"{theirs}.{norm}"] = (f"{block}.{name}.norm", NORM, eps)
    head = f"{ours}.res5.{block_positions[-1][1] + 1}"
    entries["backbone.conv_head"] = (head, COPY, None)
    entries["backbone.bn2"] = (f"{head}.norm", NORM, eps)
    return entries


def _neck_modules(num_levels):
    eps = HEAD_IABN_EPS
    entries = {}
    for i in range(num_levels):
        entries.update(
            _conv_module(f"neck.lateral_convs_top.{i}", f"backbone.lateral_top_down.{i}", eps)
        )
        coarsest_first = num_levels - 1 - i
        entries.update(
            _conv_module(
                f"neck.lateral_convs_bottom.{i}",
                f"backbone.lateral_bottom_up.{coarsest_first}",
                eps,
            )
        )
        entries.update(_conv_module(f"neck.fpn_convs.{i}", f"backbone.output_convs.{i}", eps))
    return entries


def _semantic_head_modules():
    eps = HEAD_IABN_EPS
    theirs, ours = "semantic_head", "sem_seg_head"
    entries = {f"{theirs}.conv_logits": (f"{ours}.predictor", COPY, None)}
    for i, dpc in enumerate(("dpc_32", "dpc_16")):
        for branch in range(5):
            entries.update(
                _separable(
                    f"{theirs}.lateral_convs_ss.{i}.convs.{branch}",
                    f"{ours}.{dpc}.branches.{branch}",
                    eps,
                )
            )
        entries.update(
            _conv_module(f"{theirs}.lateral_convs_ss.{i}.conv", f"{ours}.{dpc}.project", eps)
        )
    for i, lsfe in enumerate(("lsfe_8", "lsfe_4")):
        for j in range(2):
            entries.update(
                _separable(f"{theirs}.lateral_convs_ls.{i}.convs.{j}", f"{ours}.{lsfe}.{j}", eps)
            )
    for i, mc in enumerate(("mc_16_to_8", "mc_8_to_4")):
        for j in range(2):
            entries.update(
                _separable(f"{theirs}.aligning_convs.{i}.convs.{j}", f"{ours}.{mc}.convs.{j}", eps)
            )
    return entries


def _instance_head_modules(num_mask_convs):
    entries = {
        "rpn_head.rpn_conv": ("proposal_generator.rpn_head.conv", COPY, None),
        "rpn_head.rpn_cls": ("proposal_generator.rpn_head.objectness_logits", COPY, None),
        "rpn_head.rpn_reg": ("proposal_generator.rpn_head.anchor_deltas", COPY, None),
        "bbox_head.shared_fcs.0": ("roi_heads.box_head.fc1", COPY, None),
        "bbox_head.shared_fcs.1": ("roi_heads.box_head.fc2", COPY, None),
        "bbox_head.fc_cls": ("roi_heads.box_predictor.cls_score", BOX_CLASSES, None),
        "bbox_head.fc_reg": ("roi_heads.box_predictor.bbox_pred", BOX_DELTAS, None),
        "mask_head.upsample": ("roi_heads.mask_head.deconv", COPY, None),
        "mask_head.conv_logits": ("roi_heads.mask_head.predictor", MASK_LOGITS, None),
    }
    for i in range(num_mask_convs):
        entries.update(
            _separable(
                f"mask_head.convs.{i}", f"roi_heads.mask_head.mask_fcn{i + 1}", HEAD_IABN_EPS
            )
        )
    return entries


def official_module_map(model):
    """{their module name: (our module name, kind, iABN eps)} for our built ``model``.

    ``model`` is an EfficientPS built from an ``efficientps_b5_official.yaml`` config (its
    EfficientNet variant and layer counts decide the names).
    """
    bottom_up = model.backbone.bottom_up
    entries = _backbone_modules(bottom_up.name, bottom_up.block_positions())
    entries.update(_neck_modules(len(model.backbone.in_features)))
    entries.update(_semantic_head_modules())
    mask_convs = [n for n, _ in model.roi_heads.mask_head.named_children() if "mask_fcn" in n]
    entries.update(_instance_head_modules(len(mask_convs)))
    return entries


def _strip_prefixes(state_dict):
    """mmdetection saves without DistributedDataParallel's 'module.'; tolerate it anyway."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _convert_tensor(kind, field, value, eps):
    if kind == NORM and field == "weight":
        # mapillary's iABN normalises with |weight| + eps as its scale.
        return value.abs() + eps
    if kind == BOX_CLASSES:  # background first (theirs) -> background last (detectron2)
        return torch.cat([value[1:], value[:1]])
    if kind == BOX_DELTAS:  # (K + 1) x 4 class-specific rows -> K x 4, without background
        return value.reshape(-1, 4, *value.shape[1:])[1:].flatten(0, 1)
    if kind == MASK_LOGITS:  # background channel 0 dropped
        return value[1:]
    return value


def convert_official_state_dict(official, model, *, source="the checkpoint"):
    """Our state dict for ``model`` from the authors' ``official`` state dict.

    Fails, naming ``source``, on the first tensor whose module is not part of their model
    (unknown key), on any of our tensors left without a value (missing key), and on the first
    shape mismatch. Returns (state_dict, report) where report counts tensors per group.
    """
    modules = official_module_map(model)
    expected = model.state_dict()
    converted, report = {}, Counter()
    negative_scales = 0
    for key, value in _strip_prefixes(official).items():
        module, _, field = key.rpartition(".")
        if module not in modules:
            raise KeyError(
                f"{source}: unknown key {key!r}: not a tensor of the authors' EfficientPS as "
                "built by configs/*/efficientps_b5_official.yaml (is it another model, or "
                "another EfficientNet variant?)"
            )
        target_module, kind, eps = modules[module]
        target = f"{target_module}.{field}"
        if target not in expected:
            raise KeyError(f"{source}: {key!r} maps to {target!r}, which the model does not have")
        if kind == NORM and field == "weight":
            negative_scales += int((value < 0).sum())
        tensor = _convert_tensor(kind, field, value, eps)
        if tuple(tensor.shape) != tuple(expected[target].shape):
            raise ValueError(
                f"{source}: shape mismatch for {key!r} -> {target!r}: "
                f"{tuple(value.shape)} in the file gives {tuple(tensor.shape)}, the model "
                f"expects {tuple(expected[target].shape)} (other classes or another variant?)"
            )
        converted[target] = tensor.to(expected[target].dtype)
        report[next(g for p, g in GROUPS.items() if key.startswith(p))] += 1
    # mapillary's iABN before v1.0 has no num_batches_tracked; it only matters for momentum=None.
    for target, value in expected.items():
        if target not in converted and target.endswith(".num_batches_tracked"):
            converted[target] = torch.zeros_like(value)
    missing = [k for k in expected if k not in converted]
    if missing:
        raise KeyError(
            f"{source}: missing key: the model's {missing[0]!r} has no tensor in the file "
            f"({len(missing)} missing in all)"
        )
    report["iABN scales that were negative"] = negative_scales
    return converted, dict(report)


def read_official_checkpoint(path):
    """The authors' state dict and meta from ``path``, read without unpickling objects."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r}: no such file. Give the .pth from the authors' release (unzip it first)."
        )
    checkpoint = read_weight_file(path, "--input")
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path!r} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict):
        raise WeightFileError(f"--input: {path}: 'state_dict' is a {type(state_dict).__name__}")
    if not any(re.match(r"(module\.)?backbone\.conv_stem\.", k) for k in state_dict):
        raise ValueError(
            f"{path!r} is not an EfficientPS checkpoint of the authors' code (expected an "
            "mmdetection 'state_dict' with keys like 'backbone.conv_stem.weight', "
            "'neck.lateral_convs_top.0.conv.weight')"
        )
    state_dict = arrays_as_tensors(state_dict)
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise WeightFileError(
                f"--input: {path}: state_dict[{key!r}] is a {type(value).__name__}, "
                "expected a tensor"
            )
    return state_dict, checkpoint.get("meta", {})


def convert_official_checkpoint(input_path, output_path, model):
    """Convert the authors' checkpoint at ``input_path`` for ``model``; save at ``output_path``.

    The output is a detectron2 checkpoint ({"model": state_dict}) that DetectionCheckpointer
    loads into ``model`` with no missing and no unexpected keys. Returns the report of
    ``convert_official_state_dict`` plus the file's meta ("meta").
    """
    official, meta = read_official_checkpoint(input_path)
    state_dict, report = convert_official_state_dict(official, model, source=input_path)
    output_dir = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(output_dir, exist_ok=True)
    torch.save(
        {
            "model": state_dict,
            "__author__": "efficientps tools/convert_official_checkpoint.py",
            "converted_from": os.path.basename(input_path),
            "matching_heuristics": False,
        },
        output_path,
    )
    report["meta"] = {k: v for k, v in meta.items() if isinstance(v, (str, int, float))}
    return report
