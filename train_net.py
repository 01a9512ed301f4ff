#!/usr/bin/env python
"""Train and evaluate EfficientPS with detectron2.

    python train_net.py --config-file configs/Cityscapes-PanopticSegmentation/...yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python train_net.py --config-file configs/demo/efficientps_synthetic_cpu.yaml --num-gpus 2

With MODEL.DEVICE cpu, --num-gpus N (or --num-processes N) runs N CPU processes (gloo).
"""

import contextlib
import logging
import os
from collections import OrderedDict

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
import torch
from detectron2.config import get_cfg
from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from efficientps import add_efficientps_config
from efficientps.data import EfficientPSPanopticMapper
from efficientps.engine import AtomicCheckpointer, ResumableTrainingSampler, launch
from efficientps.engine.setup import cpu_safe_norms, load_weights_or_fail
from efficientps.evaluation import build_evaluator
from efficientps.modeling.meta_arch import EfficientPSWithTTA

logger = logging.getLogger("efficientps")
# Some detectron2 versions (e.g. the registry's 0.6 snapshot) checkpoint the DefaultTrainer
# without its inner trainer, so SGD momentum is lost on resume; detectron2 main includes it.
D2_CHECKPOINTS_OPTIMIZER = DefaultTrainer.state_dict is not TrainerBase.state_dict


@contextlib.contextmanager
def cpu_capable_ddp():
    """DefaultTrainer wraps the model with device_ids=[local rank], which fails on CPU."""
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        if comm.get_world_size() == 1:
            return model
        if next(model.parameters()).device.type == "cpu":
            return DistributedDataParallel(model, **kwargs)
        return original(model, fp16_compression=fp16_compression, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        with cpu_capable_ddp():
            super().__init__(cfg)

    def build_hooks(self):
        # Called by DefaultTrainer.__init__ before the hooks take their checkpointer.
        # Same checkpointables as detectron2's own checkpointer (v0.6: optimizer + scheduler;
        # main: the trainer), written atomically.
        self.checkpointer = AtomicCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        hook_list = super().build_hooks()
        if self.cfg.TEST.AUG.ENABLED:  # after the plain evaluation, at the end of training
            hook_list.append(hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model)))
        return hook_list

    def state_dict(self):
        state = super().state_dict()
        if not D2_CHECKPOINTS_OPTIMIZER:
            state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if not D2_CHECKPOINTS_OPTIMIZER and "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # The data stream continues where the checkpoint left it (not from its start).
        self.train_sampler.start = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH
        trainer = self._trainer
        if hasattr(trainer, "_data_loader_iter_obj"):  # detectron2 main: made lazily
            trainer._data_loader_iter_obj = None
        else:  # detectron2 v0.6: made in SimpleTrainer.__init__
            trainer._data_loader_iter = iter(trainer.data_loader)

    def build_train_loader(self, cfg):
        dataset = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
        for name in cfg.DATASETS.TRAIN[1:]:
            dataset = dataset + DatasetCatalog.get(name)
        self.train_sampler = ResumableTrainingSampler(len(dataset), seed=cfg.SEED)
        return build_detection_train_loader(
            dataset,
            mapper=EfficientPSPanopticMapper(cfg, is_train=True),
            sampler=self.train_sampler,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=EfficientPSPanopticMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        logger.info("Evaluating with test-time augmentation (multi-scale + flip)")
        model = EfficientPSWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in results.items())


def setup(args):
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cpu_safe_norms(cfg, comm.get_world_size())
    if cfg.SEED < 0:
        cfg.SEED = 0  # a fixed data order, so that --resume continues the same stream
    cfg.freeze()
    default_setup(cfg, args)
    # detectron2 sets up its own loggers only; ours carry the PQ tables and model summary.
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="efficientps")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights_or_fail(AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR), cfg.MODEL.WEIGHTS)
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
    """Launch ``main`` on the processes the arguments ask for."""
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    torch.set_num_threads(max(1, torch.get_num_threads() // max(1, args.num_gpus)))
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=cfg.MODEL.DEVICE,
    )


if __name__ == "__main__":
    arguments = parse_args()
    print("Command Line Args:", arguments)
    run(arguments)
