"""samples.txt's blocks: a text the model writes at a step, from the trainer's own generator."""

from __future__ import annotations

from typing import Any

from reatt import rundir
from reatt.training.config import CfgNode


def sample_block(trainer: Any, tokenizer: Any, cfg: CfgNode, step: int) -> str:
    """The block of samples.txt for ``step``: ``trainer.sample_tokens`` tokens after the prompt,
    top-k 40, from a generator seeded by (system.seed + step); the global RNG is not drawn from."""
    import torch

    prompt = cfg.trainer.sample_prompt
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_token_id]
    gen = torch.Generator(device=trainer.device).manual_seed(cfg.system.seed + step)
    x = torch.tensor([ids], dtype=torch.long, device=trainer.device)
    trainer.model.eval()
    with trainer.autocast():
        out = trainer.model.generate(x, cfg.trainer.sample_tokens, top_k=40, generator=gen)
    trainer.model.train()
    return rundir.sample_block(step, prompt + tokenizer.decode(out[0, len(ids) :].tolist()))
