"""The authors' EfficientPS-B5 (DeepSceneSeg/EfficientPS) as names, shapes and plain functions.

Written for the tests from the facts of their code, independently of the converter: their
module names and tensor shapes (``authors_state_dict``) and their forward computation in plain
torch functions (``AuthorsReference``), so that a converted checkpoint can be checked against
what their modules compute with the same tensors. Their code itself (GPLv3, CUDA ops) is not
used or copied.
"""

import math

import torch
from torch.nn import functional as F

# tf_efficientnet_b5 (geffnet): (block type, kernel, stride, expansion, out channels, repeats)
# after width 1.6 / depth 2.2 scaling; stem 48 channels, head 2048. Taps after stages 1, 2, 4.
B5_STAGES = (
    ("ds", 3, 1, 1, 24, 3),
    ("ir", 3, 2, 6, 40, 5),
    ("ir", 5, 2, 6, 64, 5),
    ("ir", 3, 2, 6, 128, 7),
    ("ir", 5, 1, 6, 176, 7),
    ("ir", 5, 2, 6, 304, 9),
    ("ir", 3, 1, 6, 512, 3),
)
STEM, HEAD, TAPS = 48, 2048, (1, 2, 4)
BACKBONE_EPS, HEAD_EPS = 1e-3, 1e-5
NUM_CLASSES, NUM_THINGS = 19, 8  # semantic classes; thing classes (theirs: + background)


class _Layout:
    def __init__(self, generator):
        self.generator = generator
        self.tensors = {}

    def _randn(self, *shape, std=1.0):
        return torch.randn(*shape, generator=self.generator) * std

    def conv(self, name, out_channels, in_per_group, k, bias=False):
        fan_in = in_per_group * k * k
        self.tensors[f"{name}.weight"] = self._randn(out_channels, in_per_group, k, k).mul(
            math.sqrt(2.0 / fan_in)
        )
        if bias:
            self.tensors[f"{name}.bias"] = self._randn(out_channels, std=0.1)

    def linear(self, name, out_features, in_features):
        self.tensors[f"{name}.weight"] = self._randn(out_features, in_features).mul(
            math.sqrt(1.0 / in_features)
        )
        self.tensors[f"{name}.bias"] = self._randn(out_features, std=0.1)

    def iabn(self, name, channels):
        """In-place ABN tensors; about a third of the weights negative (|w| + eps is used)."""
        magnitude = 0.5 + torch.rand(channels, generator=self.generator)
        sign = torch.where(torch.rand(channels, generator=self.generator) < 0.33, -1.0, 1.0)
        self.tensors[f"{name}.weight"] = magnitude * sign
        self.tensors[f"{name}.bias"] = self._randn(channels, std=0.1)
        self.tensors[f"{name}.running_mean"] = self._randn(channels, std=0.1)
        self.tensors[f"{name}.running_var"] = 0.5 + torch.rand(channels, generator=self.generator)
        self.tensors[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    def conv_module(self, name, out_channels, in_channels, k):
        self.conv(f"{name}.conv", out_channels, in_channels, k)
        self.iabn(f"{name}.bn", out_channels)

    def separable(self, name, out_channels, in_channels):
        self.conv(f"{name}.depthwise_conv.conv", in_channels, 1, 3)
        self.iabn(f"{name}.depthwise_conv.bn", in_channels)
        self.conv(f"{name}.pointwise_conv.conv", out_channels, in_channels, 1)
        self.iabn(f"{name}.pointwise_conv.bn", out_channels)


def authors_state_dict(generator):
    """Random tensors under every name of their model's state dict (Cityscapes: 19 / 8 classes)."""
    layout = _Layout(generator)
    layout.conv("backbone.conv_stem", STEM, 3, 3)
    layout.iabn("backbone.bn1", STEM)
    channels = STEM
    for stage, (kind, k, _, expansion, out, repeats) in enumerate(B5_STAGES):
        for j in range(repeats):
            name = f"backbone.blocks.{stage}.{j}"
            mid = channels * expansion
            if kind == "ds":
                layout.conv(f"{name}.conv_dw", channels, 1, k)
                layout.iabn(f"{name}.bn1", channels)
                layout.conv(f"{name}.conv_pw", out, channels, 1)
                layout.iabn(f"{name}.bn2", out)
            else:
                layout.conv(f"{name}.conv_pw", mid, channels, 1)
                layout.iabn(f"{name}.bn1", mid)
                layout.conv(f"{name}.conv_dw", mid, 1, k)
                layout.iabn(f"{name}.bn2", mid)
                layout.conv(f"{name}.conv_pwl", out, mid, 1)
                layout.iabn(f"{name}.bn3", out)
            channels = out
    layout.conv("backbone.conv_head", HEAD, channels, 1)
    layout.iabn("backbone.bn2", HEAD)

    in_channels = [40, 64, 176, HEAD]
    for i, c in enumerate(in_channels):
        layout.conv_module(f"neck.lateral_convs_top.{i}", 256, c, 1)
    for i, c in enumerate(reversed(in_channels)):  # stored coarsest first
        layout.conv_module(f"neck.lateral_convs_bottom.{i}", 256, c, 1)
        layout.conv_module(f"neck.fpn_convs.{i}", 256, 256, 3)

    for i in range(2):
        for b in range(5):
            layout.separable(f"semantic_head.lateral_convs_ss.{i}.convs.{b}", 256, 256)
        layout.conv_module(f"semantic_head.lateral_convs_ss.{i}.conv", 128, 5 * 256, 1)
        for j in range(2):
            layout.separable(
                f"semantic_head.lateral_convs_ls.{i}.convs.{j}", 128, 256 if j == 0 else 128
            )
            layout.separable(f"semantic_head.aligning_convs.{i}.convs.{j}", 128, 128)
    layout.conv("semantic_head.conv_logits", NUM_CLASSES, 4 * 128, 1, bias=True)

    layout.conv("rpn_head.rpn_conv", 256, 256, 3, bias=True)
    layout.conv("rpn_head.rpn_cls", 3, 256, 1, bias=True)
    layout.conv("rpn_head.rpn_reg", 12, 256, 1, bias=True)
    layout.linear("bbox_head.shared_fcs.0", 1024, 256 * 7 * 7)
    layout.linear("bbox_head.shared_fcs.1", 1024, 1024)
    layout.linear("bbox_head.fc_cls", NUM_THINGS + 1, 1024)
    layout.linear("bbox_head.fc_reg", 4 * (NUM_THINGS + 1), 1024)
    for i in range(4):
        layout.separable(f"mask_head.convs.{i}", 256, 256)
    # ConvTranspose2d weight: (in, out, k, k)
    layout.tensors["mask_head.upsample.weight"] = layout._randn(256, 256, 2, 2, std=0.05)
    layout.tensors["mask_head.upsample.bias"] = layout._randn(256, std=0.1)
    layout.conv("mask_head.conv_logits", NUM_THINGS + 1, 256, 1, bias=True)
    return layout.tensors


def _tf_same_pad(x, k, stride):
    pads = []
    for size in reversed(x.shape[-2:]):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class AuthorsReference:
    """Their forward, step by step as their modules run it, on their state dict (eval mode)."""

    def __init__(self, tensors):
        self.t = tensors

    # -- layers ----------------------------------------------------------------------------
    def iabn(self, x, name, eps, activation="leaky_relu"):
        """mapillary in-place ABN at inference: (x - mean) / sqrt(var + eps) * (|w| + eps) + b."""
        t = self.t
        scale = (t[f"{name}.weight"].abs() + eps) / torch.sqrt(t[f"{name}.running_var"] + eps)
        shift = t[f"{name}.bias"] - t[f"{name}.running_mean"] * scale
        y = x * scale[None, :, None, None] + shift[None, :, None, None]
        return F.leaky_relu(y, 0.01) if activation == "leaky_relu" else y

    def conv(self, x, name, *, stride=1, padding=0, dilation=1, groups=1):
        return F.conv2d(
            x,
            self.t[f"{name}.weight"],
            self.t.get(f"{name}.bias"),
            stride,
            padding,
            dilation,
            groups,
        )

    def conv_module(self, x, name, padding=0):
        return self.iabn(self.conv(x, f"{name}.conv", padding=padding), f"{name}.bn", HEAD_EPS)

    def separable(self, x, name, dilation=(1, 1)):
        x = self.conv(
            x, f"{name}.depthwise_conv.conv", padding=dilation, dilation=dilation, groups=x.shape[1]
        )
        x = self.iabn(x, f"{name}.depthwise_conv.bn", HEAD_EPS)
        x = self.conv(x, f"{name}.pointwise_conv.conv")
        return self.iabn(x, f"{name}.pointwise_conv.bn", HEAD_EPS)

    # -- backbone: geffnet tf_efficientnet_b5 with act_layer Identity, InPlaceABNSync norms ----
    def backbone_conv(self, x, name, k, stride, groups=1):
        if stride > 1:
            return self.conv(_tf_same_pad(x, k, stride), name, stride=stride, groups=groups)
        return self.conv(x, name, padding=(k - 1) // 2, groups=groups)

    def stem(self, image):
        x = self.backbone_conv(image, "backbone.conv_stem", 3, 2)
        return self.iabn(x, "backbone.bn1", BACKBONE_EPS)

    def efficientnet(self, image):
        x = self.stem(image)
        taps = []
        for stage, (kind, k, stride, _, _, repeats) in enumerate(B5_STAGES):
            for j in range(repeats):
                x = self.block(x, f"backbone.blocks.{stage}.{j}", kind, k, stride if j == 0 else 1)
            if stage in TAPS:
                taps.append(x)
        x = self.backbone_conv(x, "backbone.conv_head", 1, 1)
        taps.append(self.iabn(x, "backbone.bn2", BACKBONE_EPS))
        return taps

    def block(self, x, name, kind, k, stride):
        residual = x
        if kind == "ds":
            # DepthwiseSeparableConv: bn2 is an iABN with its default LeakyReLU (pw_act=False
            # only drops the separate activation layer, which is Identity anyway).
            y = self.backbone_conv(x, f"{name}.conv_dw", k, stride, groups=x.shape[1])
            y = self.iabn(y, f"{name}.bn1", BACKBONE_EPS)
            y = self.iabn(self.conv(y, f"{name}.conv_pw"), f"{name}.bn2", BACKBONE_EPS)
        else:
            # InvertedResidual: bn1 set to identity + nn.LeakyReLU(); bn3 set to identity.
            y = self.iabn(self.conv(x, f"{name}.conv_pw"), f"{name}.bn1", BACKBONE_EPS)
            y = self.backbone_conv(y, f"{name}.conv_dw", k, stride, groups=y.shape[1])
            y = self.iabn(y, f"{name}.bn2", BACKBONE_EPS)
            y = self.conv(y, f"{name}.conv_pwl")
            y = self.iabn(y, f"{name}.bn3", BACKBONE_EPS, activation="identity")
        if stride == 1 and x.shape[1] == y.shape[1]:
            y = y + residual
        return y

    # -- 2-way FPN (TWOWAYFPN) --------------------------------------------------------------
    def two_way_fpn(self, inputs):
        n = len(inputs)
        top = [self.conv_module(inputs[i], f"neck.lateral_convs_top.{i}") for i in range(n)]
        bottom = [
            self.conv_module(inputs[n - 1 - i], f"neck.lateral_convs_bottom.{i}") for i in range(n)
        ]
        for i in range(n - 1, 0, -1):
            top[i - 1] = top[i - 1] + F.interpolate(top[i], size=top[i - 1].shape[2:])
        for i in range(n - 1, 0, -1):
            bottom[i - 1] = bottom[i - 1] + F.interpolate(bottom[i], size=bottom[i - 1].shape[2:])
        return [
            self.conv_module(top[i] + bottom[::-1][i], f"neck.fpn_convs.{i}", padding=1)
            for i in range(n)
        ]

    # -- semantic head (EfficientPSSemanticHead) --------------------------------------------
    def dpc(self, x, name):
        dilations = [(1, 6), (1, 1), (6, 21), (18, 15), (6, 3)]
        x0 = self.separable(x, f"{name}.convs.0", dilations[0])
        x1 = self.separable(x0, f"{name}.convs.1", dilations[1])
        x2 = self.separable(x0, f"{name}.convs.2", dilations[2])
        x3 = self.separable(x0, f"{name}.convs.3", dilations[3])
        x4 = self.separable(x3, f"{name}.convs.4", dilations[4])
        return self.conv_module(torch.cat([x0, x1, x2, x3, x4], 1), f"{name}.conv")

    def two_separable(self, x, name):
        return self.separable(self.separable(x, f"{name}.convs.0"), f"{name}.convs.1")

    def mc(self, x, name):
        x = self.two_separable(x, name)
        return F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear")

    def semantic_head(self, feats):
        feats = list(feats)
        ref = feats[0].shape[-2:]
        up = lambda x, size: F.interpolate(x, size=tuple(size), mode="bilinear")  # noqa: E731
        feats[3] = self.dpc(feats[3], "semantic_head.lateral_convs_ss.0")
        feats[2] = self.dpc(feats[2], "semantic_head.lateral_convs_ss.1")
        x = self.mc(feats[2] + up(feats[3], feats[2].shape[-2:]), "semantic_head.aligning_convs.0")
        feats[1] = self.two_separable(feats[1], "semantic_head.lateral_convs_ls.0")
        feats[1] = feats[1] + up(x, feats[1].shape[-2:])
        x = self.mc(feats[1], "semantic_head.aligning_convs.1")
        feats[0] = self.two_separable(feats[0], "semantic_head.lateral_convs_ls.1")
        feats[0] = feats[0] + up(x, feats[0].shape[-2:])
        for i in range(1, 4):
            feats[i] = up(feats[i], ref)
        logits = self.conv(torch.cat(feats, 1), "semantic_head.conv_logits")
        return up(logits, (ref[0] * 4, ref[1] * 4))

    # -- instance heads ----------------------------------------------------------------------
    def rpn(self, x):
        x = F.relu(self.conv(x, "rpn_head.rpn_conv", padding=1))
        return self.conv(x, "rpn_head.rpn_cls"), self.conv(x, "rpn_head.rpn_reg")

    def box_head(self, pooled):
        x = pooled.flatten(1)
        for i in range(2):
            t = f"bbox_head.shared_fcs.{i}"
            x = F.relu(F.linear(x, self.t[f"{t}.weight"], self.t[f"{t}.bias"]))
        scores = F.linear(x, self.t["bbox_head.fc_cls.weight"], self.t["bbox_head.fc_cls.bias"])
        deltas = F.linear(x, self.t["bbox_head.fc_reg.weight"], self.t["bbox_head.fc_reg.bias"])
        return scores, deltas

    def mask_head(self, pooled):
        x = pooled
        for i in range(4):
            x = self.separable(x, f"mask_head.convs.{i}")
        x = F.conv_transpose2d(
            x, self.t["mask_head.upsample.weight"], self.t["mask_head.upsample.bias"], stride=2
        )
        return self.conv(F.relu(x), "mask_head.conv_logits")
