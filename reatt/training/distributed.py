"""The ranks of one training run: ``torch.distributed`` from the environment torchrun sets.

``python -m reatt.train`` is one process unless ``WORLD_SIZE`` says otherwise: started by
``torchrun --nproc-per-node=N`` (or by Slurm, one ``srun`` task per GPU, the template setting
the same variables: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
it joins a process group: NCCL on CUDA, gloo on CPU. One process (no ``WORLD_SIZE``, or 1)
makes no process group at all, and every collective here is the identity: the single-process
path computes exactly what it computed before distributed training existed.

Rank 0 alone writes the run's files; the others train, evaluate (the same model on the same
windows: the same numbers) and take part in every collective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from reatt.errors import ConfigError

# the standard variables torchrun sets (torch.distributed's env:// rendezvous reads them)
ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's ranks (world_size 1: alone, no process group)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """The rank that writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env(environ: dict[str, str] | None = None) -> Ranks:
    """The ranks torchrun (or the Slurm template) describes in the environment; a bad value is a
    ConfigError naming the variable."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Ranks()
    values = {}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        text = env.get(key, "0")
        if not text.isdigit():
            raise ConfigError(f"environment variable {key}={text!r}: expected a non-negative integer")
        values[key] = int(text)
    ranks = Ranks(values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"])
    if ranks.world_size < 1 or ranks.rank >= ranks.world_size:
        raise ConfigError(f"RANK={ranks.rank} WORLD_SIZE={ranks.world_size}: expected 0 <= RANK < WORLD_SIZE")
    return ranks


def check_batch(batch_size: int, grad_accum_steps: int, world_size: int) -> int:
    """The sequences of one rank's microbatch: ``batch_size`` split over the ranks and the
    accumulation steps; a ConfigError naming the keys when it does not divide."""
    parts = world_size * grad_accum_steps
    if batch_size % parts:
        raise ConfigError(
            f"trainer.batch_size={batch_size} must be divisible by the world size ({world_size}) x "
            f"trainer.grad_accum_steps={grad_accum_steps} = {parts}: each rank's microbatch holds "
            "batch_size / (world size x grad_accum_steps) sequences"
        )
    return batch_size // parts


def init(ranks: Ranks, device: Any) -> None:
    """Join the process group (nothing for one process). The device of a CUDA rank is its
    ``LOCAL_RANK``-th GPU, set before NCCL starts."""
    if not ranks.distributed:
        return
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def rank_device(ranks: Ranks, device: Any) -> Any:
    """The device this rank trains on: on CUDA, GPU ``LOCAL_RANK`` (one GPU per rank)."""
    import torch

    if not ranks.distributed or device.type != "cuda":
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={ranks.local_rank} but this node has {torch.cuda.device_count()} CUDA "
            "device(s): start at most that many ranks per node (torchrun --nproc-per-node)"
        )
    return torch.device("cuda", ranks.local_rank)


def close(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def any_rank(ranks: Ranks, flag: bool, device: Any) -> bool:
    """Whether ``flag`` is set on any rank (every rank gets the same answer)."""
    if not ranks.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(ranks: Ranks, value: Any) -> float:
    """The mean over the ranks of the one-element tensor ``value`` (the reported loss is the
    global batch's mean); waits for the device."""
    if not ranks.distributed:
        return float(value.item())
    import torch.distributed as dist

    t = value.detach().clone().reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ranks.world_size


def gather(ranks: Ranks, obj: Any) -> list[Any]:
    """Every rank's ``obj``, by rank (picklable objects; a list of one for one process)."""
    if not ranks.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def from_main(ranks: Ranks, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank: a decision only rank 0 can take (it read a file)."""
    if not ranks.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def seed_rank(ranks: Ranks, seed: int) -> None:
    """Rank r > 0 draws its dropout masks from its own stream, seeded by (seed, r); rank 0 keeps
    the one of a single-process run. Dropout under DDP is then comparable to one process only in
    distribution: the masks of a sample depend on which rank trains it."""
    if ranks.rank == 0:
        return
    import numpy as np
    import torch

    seq = np.random.SeedSequence((int(seed) % (1 << 64), ranks.rank))
    torch.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0]) >> 1)


class NoLossLog:
    """What a rank other than 0 has instead of ``rundir.LossLog``: rank 0 writes loss.csv, the
    others compute the same rows and keep none."""

    problems: list[str] = []

    def write(self, row: Any) -> None:
        pass

    def loss_at(self, step: int) -> float | None:
        return None

    def close(self) -> None:
        pass
