"""ckpt.pt: everything a resumed run needs to continue exactly as an uninterrupted one.

The trainer's state (model, optimizer, step, every RNG state, loss accumulators, counters),
the wall time so far and the config, saved with ``torch.save`` through an atomic, fsynced
write: a node crash leaves the old checkpoint or the new one, never a part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reatt.errors import RunDirError
from reatt.files import atomic_writer


def save_checkpoint(path: Path, trainer: Any, elapsed_s: float, config: dict[str, Any]) -> None:
    import torch

    state = {"trainer": trainer.state_dict(), "elapsed_s": elapsed_s, "config": config}
    with atomic_writer(path, "wb") as f:  # fsynced: a node crash leaves the old or the new
        torch.save(state, f)


def load_checkpoint(path: Path, trainer: Any, device: Any) -> float:
    """Restore ``trainer`` from ``path``; returns the wall time the run had spent so far.
    An unusable file is a RunDirError saying what to do."""
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=False)
        trainer.load_state_dict(state["trainer"])
        return float(state["elapsed_s"])
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # empty or truncated file, not a checkpoint, missing keys...
        raise RunDirError(
            f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]}); move it "
            f"aside (mv {path} {path}.bad) to restart this run from step 0"
        ) from None
