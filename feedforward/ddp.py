"""Multi-process training through Nerfstudio's trainer, including CPU (gloo).

``ns-train unisem-feedforward --machine.num-devices N`` works on N GPUs as is (Nerfstudio's ``launch`` spawns
workers with NCCL; our pipeline wraps the model in DDP). On CPU it cannot: nerfstudio 1.1.5's
``scripts/train.py:_distributed_worker`` asserts ``torch.cuda.is_available()`` and
``num_devices_per_machine <= torch.cuda.device_count()`` before calling the train loop, even though it picks gloo
for ``--machine.device-type cpu``. This module is the same launcher without those two CUDA assertions:

    python -m feedforward.ddp unisem-feedforward --data CORPUS --machine.num-devices 2 --machine.device-type cpu
    torchrun --nproc_per_node 2 -m feedforward.ddp unisem-feedforward --data CORPUS --machine.device-type cpu

(with torchrun, the process group comes from torchrun's environment; each process runs Nerfstudio's
``train_loop``). Everything else is Nerfstudio's own code: ``train_loop``, ``comms``, the Trainer.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["launch", "main"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, world_size: int, dist_url: str, config, device_type: str) -> None:
    from nerfstudio.scripts.train import train_loop
    from nerfstudio.utils import comms

    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=local_rank,
                            timeout=timedelta(minutes=30))
    comms.LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    try:
        train_loop(local_rank, world_size, config, local_rank)
        comms.synchronize()
    finally:
        dist.destroy_process_group()


def launch(config, num_processes: Optional[int] = None) -> None:
    """Run Nerfstudio's ``train_loop`` on ``num_processes`` local processes (default ``config.machine.num_devices``),
    gloo on CPU, NCCL on CUDA. Under torchrun (``LOCAL_RANK`` set) runs this process's rank only."""
    device_type = config.machine.device_type
    if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        _worker(rank, world, "env://", config, device_type)
        return
    n = int(num_processes or config.machine.num_devices)
    if n <= 1:
        from nerfstudio.scripts.train import train_loop

        train_loop(0, 1, config)
        return
    url = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_worker, nprocs=n, args=(n, url, config, device_type), join=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Same command line as ``ns-train``."""
    import tyro
    from nerfstudio.configs.config_utils import convert_markup_to_ansi
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    config = tyro.cli(AnnotatedBaseConfigUnion, args=list(argv) if argv is not None else sys.argv[1:],
                      description=convert_markup_to_ansi(__doc__))
    if config.data:
        config.pipeline.datamanager.data = config.data
    config.set_timestamp()
    if "LOCAL_RANK" not in os.environ or os.environ.get("RANK", "0") == "0":
        config.print_to_terminal()
        config.save_config()
    launch(config)


if __name__ == "__main__":
    main()
