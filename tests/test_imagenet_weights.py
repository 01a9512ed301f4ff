"""ImageNet weights from timm / gen-efficientnet and efficientnet-pytorch, checked against the
libraries themselves: their models built with random weights and statistics, SE removed through
their own constructors, converted by tools/convert_imagenet_checkpoint.py; our taps must equal
their block outputs. Nothing is downloaded (pretrained=False everywhere)."""

import importlib.util
import logging

import pytest
import timm  # a test dependency (setup.py extras "dev")
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_backbone, build_model
from efficientnet_pytorch import EfficientNet as ReferenceEfficientNet
from efficientnet_pytorch.utils import get_model_params
from safetensors.torch import save_file

from .helpers import REPO, backbone_cfg, randomise_batchnorm, small_cfg

# Our EfficientNet's taps after timm's block groups (strides 4, 8, 16); res5 is forward_features.
TAP_AFTER_GROUP = {"res2": 1, "res3": 2, "res4": 4}
VARIANTS = {  # timm model: (our name, PADDING, NORM_EPS)
    "tf_efficientnet_b0": ("efficientnet-b0", "same", 1e-3),
    "tf_efficientnet_b5": ("efficientnet-b5", "same", 1e-3),
    "efficientnet_b0": ("efficientnet-b0", "symmetric", 1e-5),
}


def load_tool():
    path = REPO / "tools" / "convert_imagenet_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_imagenet_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomise(model):
    """Random BN statistics and affine parameters (the helpers'), eval mode."""
    randomise_batchnorm(model)
    return model.eval()


def timm_taps(model, image):
    """timm's block-group outputs at strides 4, 8, 16 and its forward_features (res5)."""
    taps = {}
    x = model.bn1(model.conv_stem(image))
    for group, stage in enumerate(model.blocks):
        x = stage(x)
        for tap, after in TAP_AFTER_GROUP.items():
            if group == after:
                taps[tap] = x
    taps["res5"] = model.forward_features(image)
    return taps


def our_options(name, padding, eps):
    return [
        "MODEL.EFFICIENTNET.NAME", name, "MODEL.EFFICIENTNET.ACTIVATION", "swish",
        "MODEL.EFFICIENTNET.PADDING", padding, "MODEL.EFFICIENTNET.NORM_EPS", str(eps),
    ]  # fmt: skip


def convert(tmp_path, state, file_name, options, capsys=None):
    source = tmp_path / file_name
    if file_name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(source))
    else:
        torch.save(state, source)
    output = tmp_path / "converted.pth"
    code = load_tool().main(["--input", str(source), "--output", str(output), *options])
    return code, output


def our_backbone(options, checkpoint):
    cfg = backbone_cfg()
    cfg.merge_from_list(options)
    backbone = build_backbone(cfg)
    weights = torch.load(checkpoint, weights_only=True)["model"]
    prefix = "backbone."
    backbone.load_state_dict({k[len(prefix) :]: v for k, v in weights.items()}, strict=False)
    assert all(k.startswith("backbone.bottom_up.") for k in weights)
    return backbone.bottom_up.eval()


@pytest.mark.parametrize("timm_name", list(VARIANTS))
def test_our_taps_equal_timms_blocks_after_conversion(timm_name, tmp_path, capsys):
    name, padding, eps = VARIANTS[timm_name]
    torch.manual_seed(0)
    reference = randomise(
        timm.create_model(timm_name, pretrained=False, se_layer=torch.nn.Identity)
    )
    # timm's state dict files: safetensors (the hub's model.safetensors) and a .pth.
    file_name = f"{timm_name}.safetensors" if name.endswith("b0") else f"{timm_name}_ra.pth"
    options = our_options(name, padding, eps)
    code, output = convert(tmp_path, reference.state_dict(), file_name, options)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "2 classifier" in printed and "0 squeeze-excitation" in printed
    ours = our_backbone(options, output)
    image = torch.rand(1, 3, 96, 130)  # odd width: TF 'same' padding is asymmetric there
    with torch.no_grad():
        expected, got = timm_taps(reference, image), ours(image)
    for tap in ("res2", "res3", "res4", "res5"):
        scale = expected[tap].abs().max()
        torch.testing.assert_close(got[tap] / scale, expected[tap] / scale, atol=1e-5, rtol=1e-5)


def test_our_taps_equal_efficientnet_pytorch_without_se(tmp_path, capsys):
    # image_size None: dynamic TF "same" padding (a fixed size would precompute it for 224)
    blocks_args, global_params = get_model_params("efficientnet-b0", {"image_size": None})
    blocks_args = [args._replace(se_ratio=None) for args in blocks_args]
    torch.manual_seed(0)
    reference = randomise(ReferenceEfficientNet(blocks_args, global_params))
    options = our_options("efficientnet-b0", "same", 1e-3)
    code, output = convert(tmp_path, reference.state_dict(), "b0.pth", options)
    assert code == 0, capsys.readouterr()
    ours = our_backbone(options, output)
    image = torch.rand(1, 3, 96, 130)
    with torch.no_grad():
        endpoints = reference.extract_endpoints(image)
        expected_res5 = reference.extract_features(image)
        got = ours(image)
    for tap, endpoint in (
        ("res2", "reduction_2"),
        ("res3", "reduction_3"),
        ("res4", "reduction_4"),
    ):
        torch.testing.assert_close(got[tap], endpoints[endpoint], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["res5"], expected_res5, atol=1e-5, rtol=1e-5)


def test_converted_file_loads_as_model_weights_with_only_the_heads_missing(tmp_path, caplog):
    torch.manual_seed(0)
    reference = randomise(
        timm.create_model("tf_efficientnet_b0", pretrained=False, se_layer=torch.nn.Identity)
    )
    code, output = convert(
        tmp_path, reference.state_dict(), "tf_efficientnet_b0.pth", our_options(
            "efficientnet-b0", "same", 1e-3
        ),
    )  # fmt: skip
    assert code == 0
    cfg = small_cfg()  # the paper's LeakyReLU on these weights, as the configs train
    model = build_model(cfg)
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(model).load(str(output))
    stem = reference.conv_stem.weight
    torch.testing.assert_close(model.backbone.bottom_up.stem.weight, stem)
    missing = [k for k in model.state_dict() if not k.startswith("backbone.bottom_up.")]
    assert missing and all(not k.startswith("backbone.bottom_up.") for k in missing)


def test_a_variant_that_does_not_fit_names_the_key_and_both_shapes(tmp_path, capsys):
    reference = timm.create_model("tf_efficientnet_b0", pretrained=False)
    code, _ = convert(tmp_path, reference.state_dict(), "tf_efficientnet_b0.pth", [])  # b5 config
    error = capsys.readouterr().err
    assert code == 1
    assert "conv_stem.weight has shape (32, 3, 3, 3)" in error and "(48, 3, 3, 3)" in error


def test_pytorch_trained_weights_need_symmetric_padding_and_eps(tmp_path, capsys):
    reference = timm.create_model("efficientnet_b0", pretrained=False)
    options = our_options("efficientnet-b0", "same", 1e-3)
    code, _ = convert(tmp_path, reference.state_dict(), "efficientnet_b0.ra_in1k.pth", options)
    error = capsys.readouterr().err
    assert code == 1
    assert "MODEL.EFFICIENTNET.PADDING symmetric" in error and "NORM_EPS 1e-05" in error


def test_files_that_are_not_efficientnets_or_need_pickles_are_refused(tmp_path, capsys):
    code, _ = convert(tmp_path, {"conv1.weight": torch.zeros(1)}, "resnet.pth", [])
    assert code == 1 and "not an EfficientNet state dict" in capsys.readouterr().err
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a module object, not tensors
    code = load_tool().main(["--input", str(pickled), "--output", str(tmp_path / "o.pth")])
    assert code == 1 and "arbitrary code" in capsys.readouterr().err


def test_removed_efficientnet_weights_key_fails_naming_the_tool(tmp_path):
    """The build-time conversion is gone (it was the package's one import circle); an old
    config that still sets the key fails at build, saying what to do instead."""
    cfg = backbone_cfg()
    cfg.MODEL.EFFICIENTNET.WEIGHTS = str(tmp_path / "b0.pth")
    with pytest.raises(ValueError, match="tools/convert_imagenet_checkpoint.py .* MODEL.WEIGHTS"):
        build_backbone(cfg)
