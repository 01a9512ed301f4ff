"""Weight files are untrusted: no entry point runs code from one, each refuses it by name.

The payload of the malicious files creates a folder when unpickled, so a test can tell whether
any of its code ran. Entry points: training init, --resume, --eval-only, the demo predictor,
the export tool and both converters.
"""

import os
import pickle
import uuid

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from efficientps.data import synthetic
from efficientps.data.datasets import register_synthetic_panoptic
from efficientps.demo import PanopticPredictor, setup_cfg
from efficientps.engine.checkpoint import AtomicCheckpointer
from efficientps.engine.weight_files import (
    UnsafeWeightFileError,
    WeightFileError,
    read_weight_file,
)

from .helpers import DEMO_CONFIG, REPO, load_script, load_train_net

TINY = [
    "INPUT.CROP.SIZE", "[64, 128]", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128", "SOLVER.IMS_PER_BATCH", "1",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


class Payload:
    """Unpickling this calls os.makedirs(marker): the sign that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def malicious(tmp_path):
    """(marker, {suffix: path}) of files whose weights look fine but carry a payload."""
    marker = tmp_path / "code_ran"
    weights = {"backbone.stem.weight": np.ones((2, 2), np.float32)}
    files = {}
    pkl = tmp_path / "evil.pkl"  # detectron2 model-zoo format around the payload
    with open(pkl, "wb") as f:
        pickle.dump({"model": weights, "__author__": "zoo", "extra": Payload(marker)}, f)
    files[".pkl"] = pkl
    pth = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload(marker)}, pth)
    files[".pth"] = pth
    return marker, files


def assert_refused(error, path, what, marker):
    message = str(error.value)
    assert str(path) in message and what in message, message
    assert "os.makedirs" in message or "posix.makedirs" in message, message
    assert "arbitrary code" in message
    assert not marker.exists(), "code from the file ran"


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_the_reader_refuses_code_and_names_file_key_and_global(malicious, suffix):
    marker, files = malicious
    with pytest.raises(UnsafeWeightFileError) as error:
        read_weight_file(str(files[suffix]), "MODEL.WEIGHTS")
    assert_refused(error, files[suffix], "MODEL.WEIGHTS", marker)


def tiny_model():
    torch.manual_seed(0)
    return build_model(setup_cfg(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"]))


def test_detectron2_model_zoo_pkl_and_numpy_pth_still_load(tmp_path):
    """detectron2's model-zoo .pkl (a dict of NumPy arrays with __author__ and
    matching_heuristics, pickled by Python) and a .pth of NumPy arrays are plain data."""
    source = tiny_model()
    arrays = {k: v.numpy().copy() for k, v in source.state_dict().items()}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        pkl = tmp_path / f"zoo_{protocol}.pkl"
        with open(pkl, "wb") as f:
            zoo = {
                "model": arrays,
                "__author__": "Detectron2 Model Zoo",
                "matching_heuristics": True,
            }
            pickle.dump(zoo, f, protocol=protocol)
        target = build_model(setup_cfg(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"]))
        AtomicCheckpointer(target).load(str(pkl), checkpointables=[])
        for key, value in source.state_dict().items():
            torch.testing.assert_close(target.state_dict()[key], value, msg=key)
    npz_like = tmp_path / "arrays.pth"
    torch.save({"model": arrays}, npz_like)
    loaded = read_weight_file(str(npz_like))
    assert all(isinstance(v, np.ndarray) for v in loaded["model"].values())


def test_damaged_and_empty_files_name_themselves(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightFileError, match=r"empty.pth is empty \(0 bytes\)"):
        read_weight_file(str(empty))
    for name, data in (("text.pth", b"not a checkpoint"), ("text.pkl", b"\x80\x04garbage")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightFileError, match=f"--input: cannot read .*{name} as a .+: .+"):
            read_weight_file(str(tmp_path / name), "--input")
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS: no file"):
        read_weight_file(str(tmp_path / "missing.pth"))
    with pytest.raises(WeightFileError, match="is a folder"):
        read_weight_file(str(tmp_path))


@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights_datasets")
    synthetic.generate_split(str(root), "train", 2, seed=1, size=(64, 128), progress=False)
    name = f"synth_weights_{uuid.uuid4().hex[:6]}"
    register_synthetic_panoptic(name, str(root), "train")
    return name


def train_net_args(synthetic_split, output_dir, *extra):
    return [
        "--config-file", DEMO_CONFIG, *extra, *TINY, "SOLVER.MAX_ITER", "1",
        "DATASETS.TRAIN", f"('{synthetic_split}',)", "DATASETS.TEST", f"('{synthetic_split}',)",
        "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
@pytest.mark.parametrize("entry", ["training init", "--eval-only", "--resume"])
def test_train_net_never_runs_code_from_weights(
    malicious, suffix, entry, synthetic_split, tmp_path
):
    marker, files = malicious
    train_net = load_train_net()
    output = tmp_path / "output"
    output.mkdir()
    if entry == "--resume":  # the last checkpoint of OUTPUT_DIR is the malicious file
        last = output / f"model_0000000{suffix}"
        last.write_bytes(files[suffix].read_bytes())
        (output / "last_checkpoint").write_text(last.name)
        args = train_net_args(synthetic_split, output, "--resume")
        path, what = last, "--resume"
    else:
        extra = ["--eval-only"] if entry == "--eval-only" else []
        args = train_net_args(synthetic_split, output, *extra)
        args += ["MODEL.WEIGHTS", str(files[suffix])]
        path, what = files[suffix], "MODEL.WEIGHTS"
    with pytest.raises(UnsafeWeightFileError) as error:
        train_net.main(train_net.parse_args(args))
    assert_refused(error, path, what, marker)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_demo_export_and_converters_never_run_code_from_weights(malicious, suffix, tmp_path):
    marker, files = malicious
    path = str(files[suffix])
    cfg = setup_cfg(DEMO_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", path])
    with pytest.raises(UnsafeWeightFileError) as error:
        PanopticPredictor(cfg)
    assert_refused(error, path, "MODEL.WEIGHTS", marker)

    export_tool = load_script(REPO / "tools" / "export_model.py")
    with pytest.raises(UnsafeWeightFileError) as error:
        export_tool.main(["--config-file", DEMO_CONFIG, "--output", str(tmp_path / "export"),
                          "MODEL.WEIGHTS", path])  # fmt: skip
    assert_refused(error, path, "MODEL.WEIGHTS", marker)

    for tool in ("convert_official_checkpoint.py", "convert_imagenet_checkpoint.py"):
        converter = load_script(REPO / "tools" / tool)
        status = converter.main(["--input", path, "--output", str(tmp_path / "out.pth")])
        assert status == 1 and not (tmp_path / "out.pth").exists(), tool
        assert not marker.exists(), tool


def test_official_converter_names_a_non_tensor_value(tmp_path, capsys):
    converter = load_script(REPO / "tools" / "convert_official_checkpoint.py")
    odd = tmp_path / "odd.pth"
    torch.save({"state_dict": {"backbone.conv_stem.weight": torch.ones(1), "epoch": 3}}, odd)
    assert converter.main(["--input", str(odd), "--output", str(tmp_path / "out.pth")]) == 1
    err = capsys.readouterr().err
    assert "state_dict['epoch'] is a int, expected a tensor" in err and str(odd) in err
