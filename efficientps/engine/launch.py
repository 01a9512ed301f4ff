"""Launching N training processes, on GPUs (detectron2's launch) or on the CPU (gloo).

detectron2 v0.6's launch asserts CUDA for more than one process; current main supports CPU but
not in every release users have. On the CPU we therefore spawn the gloo workers ourselves (and
create detectron2's local process group where its public helper exists).
"""

import logging
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_local_process_group(num_processes_per_machine):
    # detectron2 main has a public helper; v0.6 has none, and on the CPU nothing of v0.6 needs
    # the local group (only its GPU DDP wrapper asks for the local rank, and GPUs go through
    # detectron2's own launch).
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_processes_per_machine)


def _cpu_worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args):
    rank = machine_rank * per_machine + local_rank
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=rank,
        timeout=DEFAULT_TIMEOUT,
    )
    _set_local_process_group(per_machine)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch(
    main_func,
    num_processes_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url="auto",
    args=(),
    device="cuda",
):
    """detectron2's launch on GPUs; our gloo launcher when ``device`` is "cpu"."""
    world_size = num_processes_per_machine * num_machines
    if not str(device).startswith("cpu") or world_size == 1:
        if world_size > 1 and not torch.cuda.is_available():
            raise RuntimeError(
                f"{world_size} processes on device {device!r} need CUDA; set MODEL.DEVICE cpu to "
                "train with CPU processes (gloo)"
            )
        return detectron2_launch(
            main_func, num_processes_per_machine, num_machines, machine_rank, dist_url, args=args
        )
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info(f"Launching {num_processes_per_machine} CPU processes (gloo) at {dist_url}")
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args),
        daemon=False,
    )
