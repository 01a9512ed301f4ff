"""EfficientNet bottom-up backbone, the 2-way FPN, and both as drop-ins in detectron2 models."""

import copy

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage
from efficientnet_pytorch import EfficientNet as ReferenceEfficientNet
from torch.nn import functional as F

from efficientps.imagenet_weights import load_imagenet_weights
from efficientps.modeling import configure_inference
from efficientps.modeling.backbone import EfficientNet, TwoWayFPN

from .helpers import backbone_cfg, count_parameters, drop_in_cfg, synthetic_instances

SPEC_CHANNELS = {
    "efficientnet-b0": [24, 40, 112, 1280],
    "efficientnet-b4": [32, 56, 160, 1792],
    "efficientnet-b5": [40, 64, 176, 2048],
}


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-b5"])
@pytest.mark.parametrize("size", [(200, 249), (128, 160)])
def test_output_shape_matches_forward(name, size):
    backbone = build_backbone(backbone_cfg(name)).eval()
    bottom_up = backbone.bottom_up
    image = torch.rand(1, 3, *size)
    with torch.no_grad():
        features = bottom_up(image)
        pyramid = backbone(image)
    for tap, channels in zip(["res2", "res3", "res4", "res5"], SPEC_CHANNELS[name]):
        spec = bottom_up.output_shape()[tap]
        assert spec.channels == channels == features[tap].shape[1]
        # TensorFlow 'SAME' convs: each stride-2 stage gives ceil(size / 2).
        expected = [-(-s // spec.stride) for s in size]
        assert list(features[tap].shape[-2:]) == expected
    for level, spec in backbone.output_shape().items():
        assert pyramid[level].shape[1] == spec.channels == 256
        assert list(pyramid[level].shape[-2:]) == [-(-s // spec.stride) for s in size]
    assert list(pyramid) == ["p2", "p3", "p4", "p5"]


def test_b4_channels_and_b0_to_b7_build():
    for i in range(8):
        EfficientNet(name=f"efficientnet-b{i}")  # every variant builds without weights
    b4 = EfficientNet(name="efficientnet-b4")
    assert [s.channels for s in b4.output_shape().values()] == SPEC_CHANNELS["efficientnet-b4"]
    with pytest.raises(ValueError, match="efficientnet-b9"):
        EfficientNet(name="efficientnet-b9")


def test_b5_parameter_counts():
    # efficientnet-pytorch's b5 without classifier and without SE: 23.15 M (the spec's count).
    reference = ReferenceEfficientNet.from_name("efficientnet-b5")
    expected = sum(
        p.numel() for k, p in reference.named_parameters() if "_fc" not in k and "_se_" not in k
    )
    backbone = build_backbone(backbone_cfg("efficientnet-b5"))
    assert count_parameters(backbone.bottom_up) == expected
    assert round(count_parameters(backbone.bottom_up) / 1e6, 2) == 23.15
    # 2 lateral sets (1x1 conv + BN) + 4 separable 3x3 output convs (dw + BN + pw + BN).
    laterals = 2 * sum(c * 256 + 2 * 256 for c in SPEC_CHANNELS["efficientnet-b5"])
    outputs = 4 * (256 * 9 + 2 * 256 + 256 * 256 + 2 * 256)
    assert count_parameters(backbone) - count_parameters(backbone.bottom_up) == laterals + outputs
    assert abs(count_parameters(backbone) / 1e6 - 24.6) < 0.05


def test_se_switch_adds_exactly_the_squeeze_excitation_parameters():
    reference = ReferenceEfficientNet.from_name("efficientnet-b0")
    se_params = sum(p.numel() for k, p in reference.named_parameters() if "_se_" in k)
    with_se = EfficientNet(name="efficientnet-b0", se=True)
    without = EfficientNet(name="efficientnet-b0", se=False)
    assert count_parameters(with_se) - count_parameters(without) == se_params > 0


def test_separable_switch_changes_fpn_by_the_expected_amount():
    separable = build_backbone(backbone_cfg(SEPARABLE=True))
    regular = build_backbone(backbone_cfg(SEPARABLE=False))
    per_level = (256 * 256 * 9 + 2 * 256) - (256 * 9 + 2 * 256 + 256 * 256 + 2 * 256)
    assert count_parameters(regular) - count_parameters(separable) == 4 * per_level


def test_both_fpn_paths_get_gradients():
    backbone = build_backbone(backbone_cfg()).train()
    pyramid = backbone(torch.rand(2, 3, 96, 128))
    sum(p.square().mean() for p in pyramid.values()).backward()
    for path in (backbone.lateral_top_down, backbone.lateral_bottom_up, backbone.output_convs):
        for name, p in path.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in backbone.bottom_up.parameters())


def test_two_way_fpn_wiring_by_hand():
    """The paper's 2-way FPN (separable outputs) on a tiny pyramid: its layers used as black
    boxes, the paths written out by hand: top-down sums coarse-to-fine, bottom-up fine-to-coarse
    (nearest resizing), one output conv on each level's sum."""
    torch.manual_seed(0)
    fpn = build_backbone(backbone_cfg(OUT_CHANNELS=8)).eval()
    shapes = fpn.bottom_up.output_shape()
    sizes = {"res2": (16, 20), "res3": (8, 10), "res4": (4, 5), "res5": (2, 3)}
    inputs = [torch.randn(1, shapes[f].channels, *sizes[f]) for f in fpn.in_features]
    with torch.no_grad():
        ours = fpn._two_way_paths(*inputs)
        top = [fpn.lateral_top_down[i](x) for i, x in enumerate(inputs)]
        bottom = [fpn.lateral_bottom_up[i](x) for i, x in enumerate(inputs)]
        resize = lambda x, like: F.interpolate(x, size=like.shape[-2:], mode="nearest")  # noqa
        p5_td = top[3]
        p4_td = top[2] + resize(p5_td, top[2])
        p3_td = top[1] + resize(p4_td, top[1])
        p2_td = top[0] + resize(p3_td, top[0])
        p2_bu = bottom[0]
        p3_bu = bottom[1] + resize(p2_bu, bottom[1])
        p4_bu = bottom[2] + resize(p3_bu, bottom[2])
        p5_bu = bottom[3] + resize(p4_bu, bottom[3])
        sums = [p2_td + p2_bu, p3_td + p3_bu, p4_td + p4_bu, p5_td + p5_bu]
        expected = [conv(x) for conv, x in zip(fpn.output_convs, sums)]
    for level, (a, b) in enumerate(zip(ours, expected)):
        torch.testing.assert_close(a, b, msg=f"p{level + 2}")


def test_top_block_adds_p6():
    backbone = build_backbone(backbone_cfg(TOP_BLOCK="maxpool")).eval()
    shapes = backbone.output_shape()
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"] and shapes["p6"].stride == 64
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, 128, 128))
    assert out["p6"].shape[-2:] == (2, 2)
    with pytest.raises(ValueError, match="TOP_BLOCK"):
        build_backbone(backbone_cfg(TOP_BLOCK="conv"))


def randomised_reference(name, seed=0):
    torch.manual_seed(seed)
    reference = ReferenceEfficientNet.from_name(name).eval()
    for m in reference.modules():  # non-trivial statistics, so that BN mistakes show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return reference


def test_weights_round_trip_reproduces_efficientnet_pytorch(tmp_path):
    reference = randomised_reference("efficientnet-b0")
    path = tmp_path / "b0_imagenet.pth"
    torch.save(reference.state_dict(), path)

    # With SE and swish the architecture is efficientnet-pytorch's: outputs must agree.
    cfg = backbone_cfg()
    cfg.MODEL.EFFICIENTNET.SE = True
    cfg.MODEL.EFFICIENTNET.ACTIVATION = "swish"
    ours = build_backbone(cfg).bottom_up
    load_imagenet_weights(ours, str(path))
    ours.eval()
    image = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.extract_features(image)
        endpoints = reference.extract_endpoints(image)
        got = ours(image)
    torch.testing.assert_close(got["res5"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["res3"], endpoints["reduction_3"], atol=1e-5, rtol=1e-4)

    # Without SE (the paper) the SE weights are dropped and counted, everything else loads.
    report = load_imagenet_weights(EfficientNet(name="efficientnet-b0"), str(path))
    assert report["squeeze-excitation"] == 4 * 16 and report["classifier"] == 2
    assert report["other"] == []


def test_wrong_weight_files_fail_clearly(tmp_path):
    backbone = EfficientNet(name="efficientnet-b0")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_imagenet_weights(backbone, str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth.*torch checkpoint"):
        load_imagenet_weights(backbone, str(garbage))
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="resnet.pth.*not an EfficientNet state dict"):
        load_imagenet_weights(backbone, str(other))
    b1 = tmp_path / "b1.pth"
    torch.save(ReferenceEfficientNet.from_name("efficientnet-b1").state_dict(), b1)
    with pytest.raises(ValueError, match=r"b1.pth.*shape.*another variant"):
        load_imagenet_weights(EfficientNet(name="efficientnet-b4"), str(b1))


def test_freeze_at_freezes_stem_and_stages():
    cfg = backbone_cfg()
    cfg.MODEL.EFFICIENTNET.FREEZE_AT = 2
    bottom_up = build_backbone(cfg).bottom_up
    assert not any(p.requires_grad for p in bottom_up.stem.parameters())
    assert not any(p.requires_grad for p in bottom_up.res2.parameters())
    assert all(p.requires_grad for p in bottom_up.res3.parameters())


def test_folded_batchnorm_gives_the_same_outputs():
    backbone = build_backbone(backbone_cfg())
    with torch.no_grad():  # move BN statistics away from identity
        backbone.train()(torch.rand(2, 3, 128, 160) * 3)
    backbone.eval()
    plain = copy.deepcopy(backbone)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    # Every BN follows a ConvNormAct: the standalone backbone folds all of them by default.
    assert configure_inference(plain, fold_norm=False, channels_last_devices=()) == batchnorms
    assert batchnorms > 60
    image = torch.rand(1, 3, 160, 224)
    with torch.no_grad():
        expected, got = plain(image), backbone(image)
    for level in expected:
        torch.testing.assert_close(got[level], expected[level], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(160, 224), (67, 91)])
@pytest.mark.parametrize("fold", [False, True])
def test_inference_padding_before_expansion_gives_the_same_outputs(size, fold, monkeypatch):
    # Stride-2 blocks pad their narrow input, expand, and clear the border at inference; the
    # reference pads the expanded tensor (the training path).
    backbone = build_backbone(backbone_cfg()).bottom_up
    with torch.no_grad():
        backbone.train()(torch.rand(2, 3, 96, 128) * 3)  # BN statistics away from identity
    backbone.eval()
    configure_inference(backbone, fold_norm=fold)
    image = torch.rand(1, 3, *size)
    strided = [b for b in backbone.modules() if hasattr(b, "_expand_padded")]
    assert sum(b.depthwise.stride[0] > 1 for b in strided) == 4
    calls = []
    block_type = type(strided[0])
    original = block_type._expand_padded

    def counted(block, x):
        calls.append(1)
        return original(block, x)

    monkeypatch.setattr(block_type, "_expand_padded", counted)
    with torch.no_grad():
        got = backbone(image)
        monkeypatch.setattr(block_type, "_pad_before_expand", lambda block: False)
        expected = backbone(image)
    assert len(calls) == 4
    for tap in expected:
        torch.testing.assert_close(got[tap], expected[tap], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "meta_architecture,backbone_name",
    [
        ("GeneralizedRCNN", "build_efficientnet_2wayfpn_backbone"),
        ("PanopticFPN", "build_efficientnet_2wayfpn_backbone"),
        ("GeneralizedRCNN", "build_efficientnet_fpn_backbone"),
    ],
)
def test_drop_in_detectron2_models_infer_and_train(meta_architecture, backbone_name):
    torch.manual_seed(0)
    model = build_model(drop_in_cfg(meta_architecture, backbone_name))
    expected_type = TwoWayFPN if "2way" in backbone_name else torch.nn.Module
    assert isinstance(model.backbone, expected_type)
    image = torch.rand(3, 200, 249) * 255

    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": image, "height": 200, "width": 249}])
    assert output["instances"].image_size == (200, 249)
    if meta_architecture == "PanopticFPN":
        assert output["sem_seg"].shape == (4, 200, 249)
        assert output["panoptic_seg"][0].shape == (200, 249)

    model.train()
    sample = {"image": image, "instances": synthetic_instances(200, 249)}
    if meta_architecture == "PanopticFPN":
        sample["sem_seg"] = torch.randint(0, 4, (200, 249))
    with EventStorage():
        losses = model([sample])
        total = sum(losses.values())
        total.backward()
    assert torch.isfinite(total)
    assert model.backbone.bottom_up.stem.weight.grad.abs().sum() > 0
