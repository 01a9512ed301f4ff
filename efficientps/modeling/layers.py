"""Building blocks shared by the backbone, the 2-way FPN and the heads.

The paper normalises with in-place activated BN (iABN: BN followed by LeakyReLU(0.01)); layers are
built as a detectron2 ``Conv2d`` with ``norm`` and ``activation`` (mathematically the same), and
``inplace_abn.convert_to_inplace_abn`` swaps in the memory-saving iABN for training.
"""

import math

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d, NaiveSyncBatchNorm
from torch import nn
from torch.nn import functional as F

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


def group_norm_groups(channels, max_groups=32):
    """Largest group count <= max_groups dividing ``channels`` (EfficientNet has 24, 40...)."""
    return math.gcd(channels, max_groups)


def build_norm(name, channels, *, eps=1e-5, momentum=0.1):
    """Return a norm layer for ``name`` (one of NORMS) over ``channels`` channels, or None.

    ``eps``/``momentum`` use PyTorch's convention; EfficientNet uses eps 1e-3 and momentum 0.01.
    """
    if name in ("", None):
        return None
    if name == "BN":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels, eps=eps, momentum=momentum)
    if name == "naiveSyncBN":
        return NaiveSyncBatchNorm(channels, eps=eps, momentum=momentum)
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=eps)
    if name == "GN":
        return nn.GroupNorm(group_norm_groups(channels), channels, eps=eps)
    raise ValueError(f"unknown norm {name!r}; expected one of {NORMS}")


def conv_norm_act(
    in_channels, out_channels, kernel_size, *, stride=1, dilation=1, groups=1, norm="", act=""
):
    """A detectron2 Conv2d with 'same' padding (odd kernels), optional norm and activation.

    ``dilation`` may be an int or a (row, col) pair; the bias is dropped when a norm follows.
    """
    dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    padding = tuple(d * (kernel_size - 1) // 2 for d in dilation)
    norm_layer = build_norm(norm, out_channels)
    return Conv2d(
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


class SamePadConv2d(Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding: output size ceil(input / stride).

    EfficientNet's ImageNet weights were trained with it; for stride 1 it is the usual symmetric
    padding (set once, no per-call cost), for stride 2 the extra pixel goes right/bottom and is
    computed from the input size (it differs between even and odd inputs).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, **kwargs):
        padding = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, **kwargs
        )

    def forward(self, x):
        if self.stride[0] > 1:
            x = F.pad(x, same_pad(x.shape[-2:], self.kernel_size[0], self.stride[0]))
        return super().forward(x)

    def forward_padded(self, x):
        """The conv (+ norm + activation) on an input that already carries its 'SAME' padding."""
        return super().forward(x)


def same_pad(size, kernel_size, stride):
    """F.pad arguments (left, right, top, bottom) of TF 'SAME' padding for ``size`` (H, W)."""
    pads = []
    for length in reversed(size):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(length / stride) - 1) * stride + kernel_size - length, 0)
        pads += [total // 2, total - total // 2]
    return pads


@torch.no_grad()
def fold_batchnorm(module):
    """Fold every eval-mode BatchNorm that follows a detectron2 Conv2d into the conv, in place.

    Inference gives the same outputs (up to float reassociation) with one op less per conv.
    Only for inference: the folded model cannot be trained as before. Returns how many convs
    were folded; GroupNorm and convs in training mode are left alone.
    """
    folded = 0
    for conv in module.modules():
        norm = getattr(conv, "norm", None)
        if not isinstance(conv, Conv2d) or norm is None or conv.training:
            continue
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats:
            mean, var, eps = norm.running_mean, norm.running_var, norm.eps
            gamma = norm.weight if norm.affine else torch.ones_like(mean)
            beta = norm.bias if norm.affine else torch.zeros_like(mean)
        elif isinstance(norm, FrozenBatchNorm2d):
            mean, var, eps = norm.running_mean, norm.running_var, norm.eps
            gamma, beta = norm.weight, norm.bias
        else:
            continue
        scale = gamma / torch.sqrt(var + eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - mean) * scale + beta)
        conv.norm = None
        if hasattr(norm, "activation_module"):  # InPlaceABN carries the conv's activation
            conv.activation = norm.activation_module()
        folded += 1
    return folded
