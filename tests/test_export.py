"""The drop-in backbone (EfficientNet + 2-way FPN) through the four PyTorch export routes.

torch.jit.script, torch.jit.trace, torch.export and torch.onnx.export, on the backbone of stock
detectron2 models (GeneralizedRCNN, PanopticFPN) as a user drops it in, and detectron2's
TracingAdapter on the whole Mask R-CNN. Eager inference folds BatchNorm into cached weights
(looked up by the tensors' version counters and storage addresses, which traced tensors do not
have); while a graph is captured the plain conv -> norm -> activation runs instead, and
``fold_for_export`` folds the norms into the convs for good, so that an exported graph holds
folded convs and no norm.
"""

import copy
import io

import pytest
import torch
from detectron2.modeling import build_model

from efficientps.modeling import fold_for_export

from .helpers import drop_in_cfg, randomise_batchnorm


class TupleOutputs(torch.nn.Module):
    """The backbone's dict of levels as a tuple in level order (what tracers return)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.train(backbone.training)  # exporters restore the wrapper's mode on all children

    def forward(self, x):
        features = self.backbone(x)
        return tuple(features[k] for k in sorted(features))


def drop_in_model(meta_architecture, backbone_name="build_efficientnet_2wayfpn_backbone"):
    torch.manual_seed(0)
    model = build_model(drop_in_cfg(meta_architecture, backbone_name)).eval()
    randomise_batchnorm(model)
    return model


@pytest.fixture(scope="module", params=["GeneralizedRCNN", "PanopticFPN"])
def backbone_and_reference(request):
    backbone = drop_in_model(request.param).backbone
    image = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        reference = TupleOutputs(backbone)(image)
    return backbone, image, reference


def assert_close_to(reference, outputs):
    assert len(outputs) == len(reference) == 5  # p2..p6
    for got, expected in zip(outputs, reference):
        got = torch.as_tensor(got)
        scale = expected.abs().max()
        torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-5)


def norm_ops(graph_text):
    return graph_text.count("batch_norm")


def copied(backbone, folded):
    model = copy.deepcopy(backbone)
    if folded:
        assert fold_for_export(model) > 60
    return model


@pytest.mark.parametrize("folded", [False, True])
def test_script_equals_eager(backbone_and_reference, folded):
    backbone, image, reference = backbone_and_reference
    scripted = torch.jit.script(copied(backbone, folded))
    with torch.no_grad():
        features = scripted(image)
    assert_close_to(reference, [features[k] for k in sorted(features)])
    assert (norm_ops(str(scripted.inlined_graph)) == 0) == folded
    # A scripted module saves and loads without its Python source.
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    with torch.no_grad():
        features = torch.jit.load(buffer)(image)
    assert_close_to(reference, [features[k] for k in sorted(features)])


def test_script_of_the_efficientnet_trunk_alone():
    """The bottom-up trunk (res2..res5) for users' own necks; detectron2's FPN itself does not
    script (its laterals are a Python list), so it is not tried."""
    trunk = drop_in_model("GeneralizedRCNN", "build_efficientnet_fpn_backbone").backbone.bottom_up
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = trunk(image)
        features = torch.jit.script(trunk)(image)
    assert sorted(features) == ["res2", "res3", "res4", "res5"]
    for name, value in expected.items():
        torch.testing.assert_close(features[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("folded", [False, True])
def test_trace_equals_eager(backbone_and_reference, folded):
    backbone, image, reference = backbone_and_reference
    model = copied(backbone, folded)
    with torch.no_grad():
        traced = torch.jit.trace(TupleOutputs(model), (image,), check_trace=True)
        assert_close_to(reference, traced(image))
    assert (norm_ops(str(traced.inlined_graph)) == 0) == folded


@pytest.mark.parametrize("folded", [False, True])
def test_torch_export_equals_eager(backbone_and_reference, folded):
    backbone, image, reference = backbone_and_reference
    model = copied(backbone, folded)
    with torch.no_grad():
        exported = torch.export.export(TupleOutputs(model), (image,))
        assert_close_to(reference, exported.module()(image))
    assert (norm_ops(str(exported.graph)) == 0) == folded


def test_onnx_export_runs_in_onnxruntime_at_other_sizes(backbone_and_reference):
    """Dynamic H and W: TF 'SAME' padding is the same for every multiple of the backbone's
    size divisibility (32), which is what detectron2 pads images to."""
    import onnxruntime

    backbone, image, reference = backbone_and_reference
    model = TupleOutputs(copied(backbone, folded=True))
    buffer = io.BytesIO()
    names = [f"p{i}" for i in range(2, 7)]
    with torch.no_grad():
        torch.onnx.export(
            model,
            (image,),
            buffer,
            input_names=["image"],
            output_names=names,
            dynamic_axes={"image": {2: "height", 3: "width"}},
            opset_version=17,
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    assert_close_to(reference, session.run(None, {"image": image.numpy()}))
    other = torch.rand(1, 3, 128, 224)
    with torch.no_grad():
        expected = model(other)
    assert_close_to(expected, session.run(None, {"image": other.numpy()}))


def test_default_onnx_exporter_works_on_a_fresh_install(backbone_and_reference, tmp_path):
    """torch.onnx.export with torch's default exporter (torch.export-based, which needs
    onnxscript, a dependency of ours), as detectron2 users call it, run by onnxruntime.
    Static sizes: with dynamic H and W it takes minutes here (the TorchScript-based exporter,
    dynamo=False, is the route for those, above)."""
    import onnxruntime

    backbone, image, reference = backbone_and_reference
    model = TupleOutputs(copied(backbone, folded=True))
    with torch.no_grad():
        program = torch.onnx.export(model, (image,))
    program.save(str(tmp_path / "backbone.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "backbone.onnx"))
    assert_close_to(reference, session.run(None, {session.get_inputs()[0].name: image.numpy()}))


def test_onnx_graph_holds_folded_convs_only(backbone_and_reference):
    import onnx

    backbone, image, _ = backbone_and_reference
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            TupleOutputs(copied(backbone, folded=True)), (image,), buffer, dynamo=False
        )
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops


def test_tracing_adapter_traces_the_whole_mask_rcnn():
    """detectron2's TracingAdapter on a stock Mask R-CNN with our backbone (detectron2 main;
    v0.6's detectron2.export imports caffe2, which PyTorch 2 no longer has)."""
    try:
        from detectron2.export import TracingAdapter
    except ImportError as error:
        pytest.skip(f"detectron2.export is not importable here ({error})")
    model = drop_in_model("GeneralizedRCNN")
    fold_for_export(model)
    image = torch.rand(3, 128, 160) * 255

    def inference(model, image):
        return model.inference([{"image": image}], do_postprocess=False)[0]

    adapter = TracingAdapter(model, image, inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        # The trace holds at another image size too (dynamic shapes recorded, not constants).
        for other in (image, torch.rand(3, 96, 224) * 255):
            expected = inference(model, other)
            got = adapter.outputs_schema(traced(other))
            assert len(got) == len(expected) > 0
            torch.testing.assert_close(got.scores, expected.scores, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
            torch.testing.assert_close(got.pred_masks, expected.pred_masks, rtol=1e-5, atol=1e-5)


def test_fold_for_export_leaves_the_eager_path_unchanged_and_refuses_training_modules():
    torch.manual_seed(0)
    backbone = build_model(drop_in_cfg("GeneralizedRCNN")).backbone
    assert fold_for_export(backbone) == 0  # training mode: nothing folded
    backbone.eval()
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        before = TupleOutputs(backbone)(image)
        fold_for_export(backbone)
        assert_close_to(before, TupleOutputs(backbone)(image))
    assert not any(getattr(m, "norm", None) is not None for m in backbone.modules()
                   if hasattr(m, "fold_norm_at_inference"))  # fmt: skip
