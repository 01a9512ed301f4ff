#!/usr/bin/env python
"""Train and evaluate EfficientPS with detectron2.

    python train_net.py --config-file configs/Cityscapes-PanopticSegmentation/...yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python train_net.py --config-file configs/demo/efficientps_synthetic_cpu.yaml --num-gpus 2

With MODEL.DEVICE cpu, --num-gpus N (or --num-processes N) runs N CPU processes (gloo).
"""

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from efficientps import add_efficientps_config
from efficientps.engine import EfficientPSTrainer as Trainer
from efficientps.engine import launch
from efficientps.engine.checkpoint import load_weights_or_fail
from efficientps.engine.cpu_norms import cpu_safe_norms
from efficientps.engine.numerics import configure_numerics

# torch's default intra-op thread count of a fresh process (one per physical core); each of
# the N processes on a machine takes 1/N of it, set in the process itself: spawned processes
# start with the default again, whatever the parent set.
DEFAULT_THREADS = torch.get_num_threads()


def build_config(args):
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    return cfg


def setup(args):
    cfg = build_config(args)
    cpu_safe_norms(cfg, comm.get_world_size())
    if cfg.SEED < 0:
        cfg.SEED = 0  # a fixed data order, so that --resume continues the same stream
    cfg.freeze()
    default_setup(cfg, args)
    configure_numerics(cfg)  # after default_setup, which sets cudnn.benchmark from the config
    # detectron2 sets up its own loggers only; ours carry the PQ tables and model summary.
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="efficientps")
    return cfg


def share_threads(num_processes_per_machine):
    torch.set_num_threads(max(1, DEFAULT_THREADS // max(1, num_processes_per_machine)))


def main(args):
    share_threads(args.num_gpus)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights_or_fail(model, cfg.MODEL.WEIGHTS, save_dir=cfg.OUTPUT_DIR)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument(
        "--num-processes", type=int, default=0, help="CPU processes (alias of --num-gpus on CPU)"
    )
    args = parser.parse_args(argv)
    if args.num_processes:
        args.num_gpus = args.num_processes
    return args


def run(args):
    """Launch ``main`` on the processes the arguments ask for (GPUs, or gloo CPU processes)."""
    device = build_config(args).MODEL.DEVICE
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=device,
    )


if __name__ == "__main__":
    arguments = parse_args()
    print("Command Line Args:", arguments)
    run(arguments)
