"""Building blocks shared by the backbone, the 2-way FPN and the heads.

The paper normalises with in-place activated BN (iABN: BN followed by LeakyReLU(0.01)); layers are
built as a detectron2 ``Conv2d`` with ``norm`` and ``activation`` (mathematically the same), and
``inplace_abn.convert_to_inplace_abn`` swaps in the memory-saving iABN for training.

Every conv with a norm is a ``ConvNormAct``: at inference (eval mode, autograd off) it runs as one
conv with the BatchNorm folded into cached weights, in channels_last layout on the CPU, without
touching its parameters (see ``ConvNormAct``).
"""

import math
from typing import List

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d, get_norm
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

ACTIVATIONS = ("leaky_relu", "swish", "relu", "")
NORMS = ("BN", "SyncBN", "naiveSyncBN", "GN", "FrozenBN", "")


def build_activation(name):
    """Return an activation module for ``name`` ("leaky_relu" is the paper's, slope 0.01)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    if name == "swish":
        return nn.SiLU(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name in ("", None):
        return None
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def check_layer_names(cfg, node):
    """Fail naming the key when MODEL.<node>'s NORM / *ACTIVATION is not a known name.

    Called by each component's builder, so a typo fails before any layer is built.
    """
    values = cfg.MODEL[node]
    for key, allowed in (
        ("NORM", NORMS),
        ("ACTIVATION", ACTIVATIONS),
        ("DECONV_ACTIVATION", ACTIVATIONS),
    ):
        if key in values and values[key] not in allowed:
            raise ValueError(f"MODEL.{node}.{key}={values[key]!r}; expected one of {allowed}")


def group_norm_groups(channels, max_groups=32):
    """Largest group count <= max_groups dividing ``channels`` (EfficientNet has 24, 40...)."""
    return math.gcd(channels, max_groups)


def build_norm(name, channels, *, eps=1e-5, momentum=0.1):
    """detectron2's ``get_norm(name, channels)`` (None for ""), with ``eps`` and ``momentum``.

    ``eps``/``momentum`` use PyTorch's convention (EfficientNet: eps 1e-3, momentum 0.01).
    GN takes the largest group count <= 32 that divides ``channels`` (detectron2's fixed 32
    does not divide EfficientNet's 24, 40, ... channels).
    """
    if name not in NORMS and name is not None:
        raise ValueError(f"unknown norm {name!r}; expected one of {NORMS}")
    if name == "GN":
        return get_norm(lambda c: nn.GroupNorm(group_norm_groups(c), c, eps=eps), channels)
    layer = get_norm(name, channels)
    if layer is not None:
        layer.eps = eps
        if hasattr(layer, "momentum"):  # FrozenBN keeps no running statistics to update
            layer.momentum = momentum
    return layer


def conv_norm_act(
    in_channels, out_channels, kernel_size, *, stride=1, dilation=1, groups=1, norm="", act=""
):
    """A detectron2 Conv2d with 'same' padding (odd kernels), optional norm and activation.

    ``dilation`` may be an int or a (row, col) pair; the bias is dropped when a norm follows.
    """
    dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    padding = tuple(d * (kernel_size - 1) // 2 for d in dilation)
    norm_layer = build_norm(norm, out_channels)
    return ConvNormAct(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=norm_layer is None,
        norm=norm_layer,
        activation=build_activation(act),
    )


class SeparableConv2d(nn.Sequential):
    """Depthwise kxk conv + norm + act, then pointwise 1x1 conv + norm + act.

    The separable convolution of every EfficientPS head (and of the 2-way FPN's output convs).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, *, dilation=1, norm="", act=""):
        super().__init__()
        self.depthwise = conv_norm_act(
            in_channels,
            in_channels,
            kernel_size,
            dilation=dilation,
            groups=in_channels,
            norm=norm,
            act=act,
        )
        self.pointwise = conv_norm_act(in_channels, out_channels, 1, norm=norm, act=act)


def conv_or_separable(in_channels, out_channels, kernel_size=3, *, separable, norm, act, **kw):
    """Either a SeparableConv2d or a regular conv_norm_act: the paper/authors'-code switches."""
    if separable:
        return SeparableConv2d(in_channels, out_channels, kernel_size, norm=norm, act=act, **kw)
    return conv_norm_act(in_channels, out_channels, kernel_size, norm=norm, act=act, **kw)


def _foldable_statistics(norm):
    """(mean, var, eps, weight, bias) of a norm that is a per-channel affine map at inference."""
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
        return norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    return None  # GroupNorm, no norm, BN without running statistics


class ConvNormAct(Conv2d):
    """detectron2's Conv2d (conv -> norm -> activation) with a fast inference path.

    In eval mode a BatchNorm (BN, SyncBN, iABN, FrozenBN) is a per-channel affine map, so
    conv -> BN is a single conv with scaled weights and a shifted bias. When autograd is off
    (``torch.no_grad``/``inference_mode``: detectron2's DefaultPredictor, ``inference_on_dataset``,
    our demo and TTA) and the module is in eval mode, this layer runs that folded conv. The
    folded weights are cached as plain tensors, never as parameters: ``state_dict()`` and
    checkpoints keep the trainable parameters, ``train()`` drops the cache, and any change to the
    tensors they come from (loading weights, an optimizer step, ``.to()``) is seen through the
    tensors' version counters and refolds. With autograd on, or in training, it is the plain
    conv -> norm -> activation.

    ``channels_last_devices``: device types on which the cached weights are channels_last, which
    makes the convs (and what follows them) run in that layout (2x faster on CPU here).
    """

    fold_norm_at_inference = True
    channels_last_devices = ("cpu",)

    def train(self, mode=True):
        if mode:
            self._inference_weights = None
        return super().train(mode)

    def forward(self, x):
        return self._conv_norm_act(x)

    def _conv_norm_act(self, x):
        # TorchScript compiles the plain path only (the cache keys on storage addresses).
        if not torch.jit.is_scripting():
            if self._runs_folded():
                return self._folded_forward(x)
        return self._plain_forward(x)

    def _plain_forward(self, x):
        """conv -> norm -> activation (detectron2's Conv2d, written out for TorchScript)."""
        x = F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _runs_folded(self):
        return (
            self.fold_norm_at_inference
            and not self.training
            and not torch.is_grad_enabled()
            and not capturing_a_graph()
            and _foldable_statistics(self.norm) is not None
        )

    def _folded_forward(self, x):
        weight, bias = self._folded_weights(_foldable_statistics(self.norm), x.device.type)
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        slope = getattr(self.norm, "slope", None)  # iABN carries the activation itself
        if slope is not None:
            return F.leaky_relu_(x, slope)
        return self.activation(x) if self.activation is not None else x

    def _folded_weights(self, statistics, device_type):
        sources = (self.weight, self.bias) + statistics[:2] + statistics[3:]
        # Tensor._version counts in-place writes (what autograd uses to detect them): with the
        # storage address it tells whether any source changed since the weights were folded.
        key = tuple((t.data_ptr(), t._version) for t in sources if t is not None)
        key += (device_type, self.channels_last_devices)
        cached = getattr(self, "_inference_weights", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        mean, var, eps, gamma, beta = statistics
        weight, bias = fuse_conv_bn_weights(self.weight, self.bias, mean, var, eps, gamma, beta)
        weight, bias = weight.detach(), bias.detach()
        if device_type in self.channels_last_devices and weight.dim() == 4:
            weight = weight.contiguous(memory_format=torch.channels_last)
        self._inference_weights = (key, (weight, bias))
        return weight, bias


def capturing_a_graph():
    """Under torch.jit.trace, torch.compile or torch.export: the plain conv -> norm -> act runs
    (the cache's version counters and storage addresses do not exist for traced tensors); to
    export folded convs, ``fold_for_export`` first."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


@torch.no_grad()
def fold_for_export(module):
    """Fold every eval-mode BatchNorm (BN, SyncBN, iABN, FrozenBN) into its conv, in place.

    For export (ONNX, torch.export, TorchScript): afterwards each conv is a plain conv with
    folded weight and bias followed by its activation, with no cache and no norm, so a traced
    or exported graph holds folded convs. The module can no longer be trained as before: fold
    a copy (``copy.deepcopy(model)``). Returns how many convs were folded.
    """
    folded = 0
    for conv in module.modules():
        if not isinstance(conv, ConvNormAct) or conv.training:
            continue
        statistics = _foldable_statistics(conv.norm)
        if statistics is None:
            continue
        mean, var, eps, gamma, beta = statistics
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, mean, var, eps, gamma, beta)
        slope = getattr(conv.norm, "slope", None)  # iABN carries its activation
        conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
        conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
        conv.norm = None
        if slope is not None:
            conv.activation = nn.LeakyReLU(slope)
        conv._inference_weights = None
        folded += 1
    return folded


def configure_inference(module, *, fold_norm=True, channels_last_devices=("cpu",)):
    """Set the inference path of every ConvNormAct in ``module``; returns how many there are.

    ``fold_norm=False`` runs conv -> norm -> activation at inference too (the plain path).
    """
    convs = [m for m in module.modules() if isinstance(m, ConvNormAct)]
    for conv in convs:
        conv.fold_norm_at_inference = fold_norm
        conv.channels_last_devices = tuple(channels_last_devices)
        conv._inference_weights = None
    return len(convs)


class SamePadConv2d(ConvNormAct):
    """Conv2d with TensorFlow's 'SAME' padding: output size ceil(input / stride).

    EfficientNet's TF ImageNet weights (efficientnet-pytorch's, timm's ``tf_*``) were trained
    with it; for stride 1 it is the usual symmetric padding (set once, no per-call cost), for
    stride 2 the extra pixel goes right/bottom and is computed from the input size (it differs
    between even and odd inputs). ``tf_same=False`` pads (k - 1) / 2 on every side at every
    stride, as timm's PyTorch-trained EfficientNets (``efficientnet_b*``) do.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, tf_same=True, **kwargs):
        symmetric = stride == 1 or not tf_same
        padding = (kernel_size - 1) // 2 if symmetric else 0
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, **kwargs
        )
        self.tf_same = tf_same

    def forward(self, x):
        if self.stride[0] > 1 and self.tf_same:
            x = F.pad(x, same_pad(x.shape[-2:], self.kernel_size[0], self.stride[0]))
        return self._conv_norm_act(x)

    def forward_padded(self, x):
        """The conv (+ norm + activation) on an input that already carries its 'SAME' padding."""
        return self._conv_norm_act(x)


def same_pad(size: List[int], kernel_size: int, stride: int) -> List[int]:
    """F.pad arguments (left, right, top, bottom) of TF 'SAME' padding for ``size`` (H, W)."""
    pads: List[int] = []
    for axis in (1, 0):  # F.pad wants (left, right, top, bottom)
        length = size[axis]
        total = max((-(-length // stride) - 1) * stride + kernel_size - length, 0)
        pads += [total // 2, total - total // 2]
    return pads
