"""train_net.py: in-process training + eval-only, crash-safe resume, 2 CPU processes."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch

from efficientps.data import synthetic
from efficientps.data.datasets import register_synthetic_panoptic
from efficientps.engine import ResumableTrainingSampler

from .dataset_trees import REPO
from .helpers import DEMO_CONFIG, TRAIN_NET, load_train_net

# The demo config made tiny: 64x128 images, batch 2, no loader workers.
TINY = [
    "INPUT.CROP.SIZE", "[64, 128]", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """$DETECTRON2_DATASETS for the child processes: synthetic/ at 64x128."""
    root = tmp_path_factory.mktemp("d2datasets")
    for split, count in (("train", 12), ("val", 4)):
        synthetic.generate_split(
            str(root / "synthetic"), split, count, seed=1, size=(64, 128), progress=False
        )
    return root


def child_env(datasets_root):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_train_then_eval_only_in_process(datasets_root, tmp_path):
    train_net = load_train_net()
    names = {}
    for split in ("train", "val"):
        names[split] = f"synth_train_net_{split}_{uuid.uuid4().hex[:6]}"
        register_synthetic_panoptic(names[split], str(datasets_root / "synthetic"), split)
    common = [
        *TINY,
        "DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", f"('{names['val']}',)",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    args = train_net.parse_args(
        ["--config-file", DEMO_CONFIG, *common, "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)"]
    )
    train_net.main(args)
    weights = tmp_path / "model_final.pth"
    assert weights.is_file()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert any("loss_sem_seg" in m for m in metrics)

    args = train_net.parse_args(
        ["--config-file", DEMO_CONFIG, "--eval-only", *common, "MODEL.WEIGHTS", str(weights)]
    )
    results = train_net.main(args)
    assert set(results["panoptic_seg"]) >= {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"}
    assert "mIoU" in results["sem_seg"]
    written = json.loads((tmp_path / "inference" / names["val"] / "results.json").read_text())
    assert written["panoptic_seg"]["PQ"] == pytest.approx(results["panoptic_seg"]["PQ"])

    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_bytes(b"garbage")
    pickled = tmp_path / "pickled_object.pth"  # unpickling it would construct any object
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, pickled)
    for path, message in (
        (bad, "cannot read"),
        (tmp_path / "missing.pth", "no file"),
        (pickled, "arbitrary code .* refused"),
    ):
        args = train_net.parse_args(
            ["--config-file", DEMO_CONFIG, "--eval-only", *common, "MODEL.WEIGHTS", str(path)]
        )
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            train_net.main(args)


@pytest.mark.slow
def test_non_finite_loss_names_iteration_and_terms(datasets_root, tmp_path):
    train_net = load_train_net()
    name = f"synth_nan_{uuid.uuid4().hex[:6]}"
    register_synthetic_panoptic(name, str(datasets_root / "synthetic"), "train")
    args = train_net.parse_args(
        ["--config-file", DEMO_CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)",
         "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "3"]
    )  # fmt: skip
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with torch.no_grad():
        trainer.model.sem_seg_head.predictor.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"iteration=0[\s\S]*loss_sem_seg"):
        trainer.train()


def run_train_net(datasets_root, output_dir, *extra, resume=False, wait=True):
    """train_net.py in a child process; its console output goes to a file (a full pipe would
    block it). Returns the process (wait=False) or its output."""
    command = [sys.executable, TRAIN_NET, "--config-file", DEMO_CONFIG]
    command += ["--resume"] if resume else []
    command += [*TINY, "OUTPUT_DIR", str(output_dir), "TEST.EVAL_PERIOD", "0", *extra]
    console = open(output_dir / f"console_{'resume' if resume else 'first'}.txt", "w+")
    process = subprocess.Popen(
        command, env=child_env(datasets_root), cwd=str(REPO), stdout=console, stderr=console
    )
    process.console = console
    if not wait:
        return process
    process.wait(timeout=600)
    console.seek(0)
    out = console.read()
    assert process.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_the_last_checkpoint(datasets_root, tmp_path):
    schedule = ["SOLVER.MAX_ITER", "10", "SOLVER.STEPS", "(6,)", "SOLVER.CHECKPOINT_PERIOD", "2",
                "DATASETS.TEST", "()"]  # fmt: skip
    process = run_train_net(datasets_root, tmp_path, *schedule, wait=False)
    last = tmp_path / "last_checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill as soon as the iteration-5 checkpoint is recorded
        if last.is_file() and last.read_text().strip() == "model_0000005.pth":
            break
        if process.poll() is not None:
            process.console.seek(0)
            pytest.fail("training ended before it could be killed:\n" + process.console.read())
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    recorded = last.read_text().strip()
    assert recorded.startswith("model_") and (tmp_path / recorded).stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp*"))  # nothing half-written left behind

    killed_at = int(recorded[len("model_") : -len(".pth")])
    out = run_train_net(datasets_root, tmp_path, *schedule, resume=True)
    assert f"Starting training from iteration {killed_at + 1}" in out
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    # The schedule continued: base LR 0.02, x0.1 after the step at iteration 6.
    assert metrics[-1]["iteration"] == 9
    assert metrics[-1]["lr"] == pytest.approx(0.002, rel=1e-6)
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 9
    # Momentum buffers travel with the checkpoint, whatever the detectron2 version.
    optimizer = final["trainer"]["_trainer"]["optimizer"]
    assert optimizer["state"] and "momentum_buffer" in next(iter(optimizer["state"].values()))


def test_resumable_sampler_continues_the_same_stream():
    full = ResumableTrainingSampler(7, seed=3)
    stream = iter(full)
    first = [next(stream) for _ in range(20)]
    resumed = iter(ResumableTrainingSampler(7, seed=3, start=9))
    assert [next(resumed) for _ in range(11)] == first[9:]
    assert sorted(first[:7]) == list(range(7)) and first[:7] != first[7:14]


@pytest.mark.slow
def test_two_cpu_processes_train_and_keep_identical_replicas(datasets_root, tmp_path):
    """2 gloo processes: identical replicas after training, and evaluation split over both
    processes gives exactly what one process gives with the same weights."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.distributed_worker", str(tmp_path), DEMO_CONFIG, *TINY],
        env=child_env(datasets_root),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    report = json.loads((tmp_path / "replicas.json").read_text())
    assert report["world_size"] == 2
    assert report["iterations"] == 4
    assert len(set(report["checksums"])) == 1, report["checksums"]
    assert report["checksums"][0] != report["initial_checksum"]  # they did train
    assert report["max_abs_difference"] == 0.0

    train_net = load_train_net()
    name = f"synth_eval_{uuid.uuid4().hex[:6]}"
    register_synthetic_panoptic(name, str(datasets_root / "synthetic"), "val")
    args = train_net.parse_args(
        ["--config-file", DEMO_CONFIG, "--eval-only", *TINY, "DATASETS.TEST", f"('{name}',)",
         "OUTPUT_DIR", str(tmp_path / "single_eval"),
         "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]
    )  # fmt: skip
    single = train_net.main(args)
    distributed = report["results"]
    assert set(distributed) == set(single) == {"panoptic_seg", "sem_seg", "segm"}
    for task, metrics in single.items():
        for metric, value in metrics.items():
            assert distributed[task][metric] == pytest.approx(value, abs=1e-9, nan_ok=True), (
                task,
                metric,
            )


@pytest.mark.slow
def test_two_machines_with_one_process_each(datasets_root, tmp_path):
    """The multi-node path (--num-machines 2, --machine-rank, --dist-url) as two 'machines' on
    this host: both ranks train, rank 0 writes the checkpoint, the world size is 2."""
    from efficientps.engine.launch import _free_port

    dist_url = f"tcp://127.0.0.1:{_free_port()}"
    common = [
        sys.executable, TRAIN_NET, "--config-file", DEMO_CONFIG, "--num-gpus", "1",
        "--num-machines", "2", "--dist-url", dist_url,
    ]  # fmt: skip
    opts = [*TINY, "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)]
    machines = [
        subprocess.Popen(
            [*common, "--machine-rank", str(rank), *opts],
            env=child_env(datasets_root),
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [machine.communicate(timeout=600)[0] for machine in machines]
    for machine, output in zip(machines, outputs):
        assert machine.returncode == 0, output[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    log = (tmp_path / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    assert "Rank of current process: 1. World size: 2" in (tmp_path / "log.txt.rank1").read_text()
