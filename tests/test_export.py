"""The backbone (EfficientNet + 2-way FPN) through torch.jit.trace and torch.export.

Eager inference folds BatchNorm into cached weights (looked up by the tensors' version counters
and storage addresses, which traced tensors do not have); while a graph is captured the plain
conv -> norm -> activation runs instead, and ``fold_for_export`` folds the norms into the convs
for good, so that an exported graph holds folded convs and no norm.
"""

import copy

import pytest
import torch
from detectron2.modeling import build_backbone

from efficientps.modeling import fold_for_export

from .helpers import backbone_cfg, randomise_batchnorm


class TupleOutputs(torch.nn.Module):
    """The backbone's dict of levels as a tuple in level order (what tracers return)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        features = self.backbone(x)
        return tuple(features[k] for k in sorted(features))


@pytest.fixture(scope="module")
def backbone_and_reference():
    torch.manual_seed(0)
    backbone = build_backbone(backbone_cfg()).eval()
    randomise_batchnorm(backbone)
    image = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        reference = TupleOutputs(backbone)(image)
    return backbone, image, reference


def assert_close_to(reference, outputs):
    assert len(outputs) == len(reference) == 4
    for got, expected in zip(outputs, reference):
        scale = expected.abs().max()
        torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-5)


def norm_ops(graph_text):
    return graph_text.count("batch_norm")


@pytest.mark.parametrize("folded", [False, True])
def test_trace_equals_eager(backbone_and_reference, folded):
    backbone, image, reference = backbone_and_reference
    model = copy.deepcopy(backbone)
    if folded:
        assert fold_for_export(model) > 60
    with torch.no_grad():
        traced = torch.jit.trace(TupleOutputs(model), (image,), check_trace=True)
        assert_close_to(reference, traced(image))
    assert (norm_ops(str(traced.inlined_graph)) == 0) == folded


@pytest.mark.parametrize("folded", [False, True])
def test_torch_export_equals_eager(backbone_and_reference, folded):
    backbone, image, reference = backbone_and_reference
    model = copy.deepcopy(backbone)
    if folded:
        fold_for_export(model)
    with torch.no_grad():
        exported = torch.export.export(TupleOutputs(model), (image,))
        assert_close_to(reference, exported.module()(image))
    assert (norm_ops(str(exported.graph)) == 0) == folded


def test_fold_for_export_leaves_the_eager_path_unchanged_and_refuses_training_modules():
    torch.manual_seed(0)
    backbone = build_backbone(backbone_cfg())
    assert fold_for_export(backbone) == 0  # training mode: nothing folded
    backbone.eval()
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        before = TupleOutputs(backbone)(image)
        fold_for_export(backbone)
        assert_close_to(before, TupleOutputs(backbone)(image))
    assert not any(getattr(m, "norm", None) is not None for m in backbone.modules()
                   if hasattr(m, "fold_norm_at_inference"))  # fmt: skip
