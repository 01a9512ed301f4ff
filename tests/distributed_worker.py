"""Child process of test_training: train_net's Trainer on 2 gloo CPU processes, then compare.

    python -m tests.distributed_worker OUTPUT_DIR CONFIG [KEY VALUE ...]

Writes OUTPUT_DIR/replicas.json with every rank's parameter checksum, the largest difference
between rank 0's and rank 1's parameters after training, and the results of evaluating the
trained model on synthetic_panoptic_val split over the 2 processes (each rank gets half of the
images; the evaluators gather).
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from detectron2.utils import comm

from efficientps.engine import launch

from .helpers import load_train_net

ITERATIONS = 4


def worker(output_dir, config, opts):
    train_net = load_train_net()
    args = train_net.parse_args(
        ["--config-file", config, *opts, "OUTPUT_DIR", output_dir, "DATASETS.TEST", "()",
         "SOLVER.MAX_ITER", str(ITERATIONS)]
    )  # fmt: skip
    args.num_gpus = 2
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    initial = float(sum(p.detach().double().sum() for p in model.parameters()))
    trainer.train()
    vector = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(vector) for _ in range(comm.get_world_size())]
    dist.all_gather(gathered, vector)
    eval_cfg = cfg.clone()
    eval_cfg.defrost()
    eval_cfg.DATASETS.TEST = ("synthetic_panoptic_val",)
    eval_cfg.OUTPUT_DIR = os.path.join(output_dir, "distributed_eval")
    results = train_net.Trainer.test(eval_cfg, model)
    if comm.is_main_process():
        report = {
            "results": results,
            "world_size": comm.get_world_size(),
            "iterations": trainer.iter,  # max_iter once train() has returned
            "initial_checksum": initial,
            "checksums": [float(v.double().sum()) for v in gathered],
            "max_abs_difference": float((gathered[0] - gathered[1]).abs().max()),
        }
        with open(os.path.join(output_dir, "replicas.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    output_dir, config, *opts = sys.argv[1:]
    torch.set_num_threads(1)
    launch(worker, 2, args=(output_dir, config, opts), device="cpu")
