"""One training step's gradients, as ``python -m reatt.train`` would compute them on this rank:
run under torchrun by tests/test_distributed.py (rank 0 saves them), and in its own process for
one rank. ``python tests/ddp_grads.py OUT.pt --key=value ...``"""

from __future__ import annotations

import sys

import torch

from reatt.training import distributed
from reatt.training.run import TrainingRun, parse_config


def step_grads(argv: list[str]) -> dict[str, torch.Tensor]:
    """The loss and every parameter's gradient after step 1's backward (DDP-averaged on ranks)."""
    run = TrainingRun(parse_config(argv), argv)
    threads = torch.get_num_threads()  # _setup sets system.num_threads; execute() gives it back
    distributed.init(run.ranks, run.device)
    try:
        run._setup()
        trainer = run.trainer
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, _ = trainer._forward_backward(iter(trainer.batches()))
        grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters()}
        return {"loss": torch.tensor(loss), **grads}
    finally:
        distributed.close(run.ranks)
        torch.set_num_threads(threads)  # not leaked into the next in-process test


if __name__ == "__main__":
    out, args = sys.argv[1], sys.argv[2:]
    result = step_grads(args)
    if distributed.ranks_from_env().main:
        torch.save(result, out)
