"""ckpt.pt: everything a resumed run needs to continue exactly as an uninterrupted one.

The trainer's state (model, optimizer, step, every RNG state, loss accumulators, counters),
the wall time so far, the config and the identity of the data it trains on, saved with
``torch.save`` through an atomic, fsynced write: a node crash leaves the old checkpoint or the
new one, never a part. A run of several ranks saves one file, written by rank 0, with every
rank's RNG state (``ranks``: the world size and the states by rank). It is loaded with
``weights_only=True``: a crafted ckpt.pt cannot run code, it is only an unreadable checkpoint.
"""

from __future__ import annotations

import errno
import shutil
import warnings
from pathlib import Path
from typing import Any

from reatt.errors import RunDirError
from reatt.files import atomic_writer
from reatt.training import distributed

FULL_BELOW = 64 << 20  # a failed torch.save with less free space than this: the disk is full


def save_checkpoint(
    path: Path, trainer: Any, elapsed_s: float, config: dict[str, Any], data: dict[str, Any]
) -> None:
    """On every rank (each one's RNG state is gathered); rank 0 writes."""
    import torch

    rngs = distributed.gather(trainer.ranks, trainer.rng_state())
    if not trainer.ranks.main:
        return
    state = {"trainer": trainer.state_dict(), "elapsed_s": elapsed_s, "config": config, "data": data}
    state["ranks"] = {"world_size": trainer.ranks.world_size, "rng": rngs}
    try:
        with atomic_writer(path, "wb") as f:  # fsynced: a node crash leaves the old or the new
            torch.save(state, f)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError
        free = shutil.disk_usage(path.parent).free
        if isinstance(e, OSError) and e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if isinstance(e, RuntimeError) and free >= FULL_BELOW:
            raise
        raise RunDirError(
            f"cannot save {path}: No space left on device ({free:,} bytes free); the previous "
            "checkpoint, if any, is kept: free some space and run again to resume from it"
        ) from None


def load_checkpoint(path: Path, device: Any) -> dict[str, Any]:
    """The state in ``path`` (``trainer``, ``elapsed_s``, ``config``, and ``data`` from reatt 0.2
    on), loaded without running any code; an unusable file is a RunDirError saying what to do."""
    import importlib

    import numpy as np
    import torch

    # what numpy's RNG state of checkpoints before reatt 0.2 needs: plain arrays, no code
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
    arrays = [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(arrays), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a foreign file's pickle protocol: refused below anyway
            state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or not {"trainer", "elapsed_s"} <= set(state):
            raise ValueError("not a reatt checkpoint")
        return state
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # empty, truncated or crafted file, not a checkpoint, missing keys...
        raise unreadable(path, e) from None


def restore(path: Path, trainer: Any, state: dict[str, Any], rng_used: bool) -> float:
    """Put ``state`` (from ``load_checkpoint``) into ``trainer``, each rank its own RNG state;
    the wall time so far. On another number of ranks than it was saved by, the model, optimizer
    and data position carry over (the sample stream does not depend on the world size) but the
    ranks' RNG streams cannot: refused where training draws from them (``rng_used``: dropout)."""
    saved = state.get("ranks") or {"world_size": 1, "rng": None}  # older checkpoints: one process
    world = trainer.ranks.world_size
    if saved["world_size"] != world and rng_used:
        raise RunDirError(
            f"cannot resume {path}: it was saved by a run of {saved['world_size']} rank(s), this one "
            f"has {world}; with dropout on, each rank's dropout stream cannot continue on another "
            f"number of ranks: resume with {saved['world_size']} (torchrun --nproc-per-node, "
            "[slurm] nodes x gpus_per_node), or move the work dir aside to start over"
        )
    try:
        trainer.load_state_dict(state["trainer"])  # rank 0's RNG state
        if saved["rng"] is not None and saved["world_size"] == world:
            trainer.set_rng_state(saved["rng"][trainer.ranks.rank])
        return float(state["elapsed_s"])
    except Exception as e:  # shapes or keys of another model, a damaged state...
        raise unreadable(path, e) from None


def uses_rng(cfg: Any) -> bool:
    """Whether training draws from the global RNG (dropout): its state then matters on resume."""
    m = cfg.model
    return any(getattr(m, k) > 0 for k in ("embd_pdrop", "resid_pdrop", "attn_pdrop"))


def unreadable(path: Path, e: Exception) -> RunDirError:
    return RunDirError(
        f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]}); move it "
        f"aside (mv {path} {path}.bad) to restart this run from step 0"
    )
