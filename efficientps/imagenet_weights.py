"""ImageNet EfficientNet weights (timm / gen-efficientnet, efficientnet-pytorch) as our backbone's.

The paper's backbone starts from ImageNet: the authors load gen-efficientnet's
``tf_efficientnet_b5`` RandAugment weights (today timm's ``tf_efficientnet_b5.ra_in1k``) and drop
squeeze-and-excitation and the classifier. Like detectron2's tools/convert-*-to-d2.py, a file is
converted once (tools/convert_imagenet_checkpoint.py) into a checkpoint with the backbone's keys
only, which ``MODEL.WEIGHTS`` loads (detectron2 reports the heads as missing, as for any ImageNet
initialisation).

Two layouts are told apart by their keys:
- timm / gen-efficientnet: ``conv_stem``, ``bn1``, ``blocks.S.B.{conv_dw, bn1, conv_pw, ...}``,
  ``conv_head``, ``bn2``, ``classifier``;
- efficientnet-pytorch: ``_conv_stem``, ``_bn0``, ``_blocks.i._depthwise_conv``, ... ``_fc``.
Both number their blocks in EfficientNet's order, which is ours (``EfficientNet.block_positions``).
Files are untrusted: ``.pth``/``.bin`` are read with ``torch.load(weights_only=True)``,
``.safetensors`` with safetensors (which holds tensors only).
"""

import logging
import os
import re

import torch

TIMM, EFFICIENTNET_PYTORCH = "timm", "efficientnet-pytorch"
BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
PREFIXES = ("module.", "model.", "backbone.")

logger = logging.getLogger(__name__)


class ImageNetWeightsError(ValueError):
    """A weight file that does not fit: the message names the file and what was expected."""


def read_state_dict(path, what="--input"):
    """The tensors of ``path`` (.pth, .bin or .safetensors), unwrapped and without prefixes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file {path!r} (a local file; nothing is downloaded)")
    from .engine.weight_files import arrays_as_tensors, read_weight_file  # runs no file code

    state = read_weight_file(path, what)
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ImageNetWeightsError(f"{what}: {path!r} holds no state dict")
    state = arrays_as_tensors(state)
    return {_strip_prefix(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(key):
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def layout_of(state, path="the file"):
    """TIMM or EFFICIENTNET_PYTORCH, told by the keys; anything else is an error."""
    if "conv_stem.weight" in state and "blocks.0.0.conv_dw.weight" in state:
        return TIMM
    if "_conv_stem.weight" in state and "_blocks.0._depthwise_conv.weight" in state:
        return EFFICIENTNET_PYTORCH
    raise ImageNetWeightsError(
        f"{path}: not an EfficientNet state dict of timm / gen-efficientnet (keys like "
        "'conv_stem.weight', 'blocks.0.0.conv_dw.weight') or efficientnet-pytorch "
        f"('_conv_stem.weight', '_blocks.0._depthwise_conv.weight'); first keys: {list(state)[:4]}"
    )


def _conv_bn(mapping, source_conv, source_bn, target):
    mapping[f"{source_conv}.weight"] = f"{target}.weight"
    for field in BN_FIELDS:
        mapping[f"{source_bn}.{field}"] = f"{target}.norm.{field}"


def _squeeze_excitation(mapping, source_reduce, source_expand, target):
    for source, part in ((source_reduce, "reduce"), (source_expand, "expand")):
        for field in ("weight", "bias"):
            mapping[f"{source}.{field}"] = f"{target}.se.{part}.{field}"


def key_map(backbone, layout):
    """{source key: our key} for every backbone tensor of ``layout`` (SE included)."""
    mapping = {}
    positions = backbone.block_positions()
    head = f"res5.{len(backbone.res5) - 1}"
    if layout == EFFICIENTNET_PYTORCH:
        _conv_bn(mapping, "_conv_stem", "_bn0", "stem")
        for i, (stage, index) in enumerate(positions):
            source, target = f"_blocks.{i}", f"{stage}.{index}"
            _conv_bn(mapping, f"{source}._expand_conv", f"{source}._bn0", f"{target}.expand")
            _conv_bn(mapping, f"{source}._depthwise_conv", f"{source}._bn1", f"{target}.depthwise")
            _conv_bn(mapping, f"{source}._project_conv", f"{source}._bn2", f"{target}.project")
            _squeeze_excitation(mapping, f"{source}._se_reduce", f"{source}._se_expand", target)
        _conv_bn(mapping, "_conv_head", "_bn1", head)
        return mapping
    _conv_bn(mapping, "conv_stem", "bn1", "stem")
    for source, (stage, index) in zip(_timm_block_names(backbone), positions):
        target = f"{stage}.{index}"
        block = getattr(backbone, stage)[index]
        if block.expand is None:  # timm's DepthwiseSeparableConv: conv_dw, bn1, conv_pw, bn2
            _conv_bn(mapping, f"{source}.conv_dw", f"{source}.bn1", f"{target}.depthwise")
            _conv_bn(mapping, f"{source}.conv_pw", f"{source}.bn2", f"{target}.project")
        else:  # InvertedResidual: conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3
            _conv_bn(mapping, f"{source}.conv_pw", f"{source}.bn1", f"{target}.expand")
            _conv_bn(mapping, f"{source}.conv_dw", f"{source}.bn2", f"{target}.depthwise")
            _conv_bn(mapping, f"{source}.conv_pwl", f"{source}.bn3", f"{target}.project")
        _squeeze_excitation(mapping, f"{source}.se.conv_reduce", f"{source}.se.conv_expand", target)
    _conv_bn(mapping, "conv_head", "bn2", head)
    return mapping


def _timm_block_names(backbone):
    """timm's ``blocks.S.B`` names in block order: stage S is EfficientNet's block group."""
    from .modeling.backbone.efficientnet import efficientnet_block_args

    names, counts = [], {}
    for group, _ in efficientnet_block_args(backbone.name)[0]:
        names.append(f"blocks.{group}.{counts.get(group, 0)}")
        counts[group] = counts.get(group, 0) + 1
    return names


def convert_state_dict(state, backbone, path="the file"):
    """Our backbone's tensors from an ImageNet state dict, and what was dropped.

    Returns (converted {our key: tensor}, report). Fails naming the first key whose shape does
    not fit (another variant), or the backbone tensors the file lacks.
    """
    layout = layout_of(state, path)
    mapping = key_map(backbone, layout)
    own = backbone.state_dict()
    converted, dropped = {}, {"squeeze-excitation": 0, "classifier": 0, "other": []}
    for key, value in state.items():
        target = mapping.get(key)
        if target is not None and target in own:
            if own[target].shape != value.shape:
                raise ImageNetWeightsError(
                    f"{path}: {key} has shape {tuple(value.shape)}, but {backbone.name} "
                    f"({target}) needs {tuple(own[target].shape)}: the weights of another "
                    "variant? (MODEL.EFFICIENTNET.NAME)"
                )
            converted[target] = value
        elif target is not None and ".se." in target:
            dropped["squeeze-excitation"] += 1
        elif re.match(r"_?(classifier|fc)\.", key):
            dropped["classifier"] += 1
        else:
            dropped["other"].append(key)
    missing = sorted(set(own) - set(converted))
    needed = [k for k in missing if not k.endswith("num_batches_tracked")]
    if needed:
        raise ImageNetWeightsError(
            f"{path}: {len(needed)} tensors of {backbone.name} are not in the file, e.g. "
            f"{needed[:3]}; is it an EfficientNet of this variant?"
        )
    for key in missing:  # older files have no num_batches_tracked
        converted[key] = own[key].clone()
    report = {"layout": layout, "converted": len(converted), **dropped}
    return converted, report


def describe(report):
    other = report["other"]
    return (
        f"{report['converted']} tensors converted ({report['layout']} layout); dropped: "
        f"{report['squeeze-excitation']} squeeze-excitation, {report['classifier']} classifier, "
        f"{len(other)} other{' ' + str(other[:5]) if other else ''}"
    )


def load_imagenet_weights(backbone, path, what="--input"):
    """Convert ``path`` and load it into ``backbone`` (an EfficientNet); returns the report."""
    converted, report = convert_state_dict(read_state_dict(path, what), backbone, f"{what} {path}")
    backbone.load_state_dict(converted)
    logger.info(f"{path}: {describe(report)}")
    return report


# What each family of ImageNet weights was trained with: MODEL.EFFICIENTNET.{PADDING, NORM_EPS}.
SOURCE_SETTINGS = {
    "tf": {"PADDING": "same", "NORM_EPS": 1e-3},  # timm tf_*, gen-efficientnet tf_*, eff-pytorch
    "pytorch": {"PADDING": "symmetric", "NORM_EPS": 1e-5},  # timm efficientnet_b* (PyTorch)
}


def source_family(path, layout, family="auto"):
    """ "tf" or "pytorch": how the weights were trained, told by ``family`` or the file's name.

    The state dicts of timm's ``tf_efficientnet_b5`` and ``efficientnet_b5`` have the same keys;
    only the name (e.g. ``tf_efficientnet_b5_ra-9a3e5369.pth``, or a Hugging Face folder
    ``timm/tf_efficientnet_b5.ra_in1k``) tells them apart. efficientnet-pytorch's are TF ports.
    """
    if family != "auto":
        return family
    if layout == EFFICIENTNET_PYTORCH or "tf_" in os.path.abspath(path):
        return "tf"
    if re.search(r"efficientnet_b\d", os.path.abspath(path)):
        return "pytorch"
    return None


def check_source_settings(efficientnet_cfg, family):
    """Fail naming the keys when the config would not compute what the weights were trained
    with (timm computes ``tf_*`` with TF padding and eps 1e-3, the others symmetric and 1e-5)."""
    wrong = {
        key: value
        for key, value in SOURCE_SETTINGS[family].items()
        if efficientnet_cfg[key] != value
    }
    if wrong:
        fixes = " ".join(f"MODEL.EFFICIENTNET.{k} {v}" for k, v in wrong.items())
        raise ImageNetWeightsError(
            f"these are {family}-trained weights, but the config has "
            + ", ".join(f"MODEL.EFFICIENTNET.{k}={efficientnet_cfg[k]}" for k in wrong)
            + f": set {fixes} (in the config you train with, and pass them here)"
        )
