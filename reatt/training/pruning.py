"""Pruning a hopeless tuning run: at an evaluation, compare the held-out NLL with the sibling
candidates' at the same step (their loss.csv, written as they train, here or on other nodes of a
shared filesystem); far enough behind the best of them, the run stops.

Only the same step is compared (never an interpolation: a candidate with a lower learning rate is
slower early and may catch up), only from ``trainer.prune_after`` on, and a sibling without that
step (not there yet, or its loss.csv missing or half-written) does not count. A pruned run keeps
its loss.csv, and final.json says ``pruned`` with the step and the sibling it lost to.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from reatt import rundir


def best_sibling(siblings: str, step: int) -> tuple[float, str] | None:
    """The lowest held-out NLL a sibling logged at ``step``, and that sibling's directory name."""
    best: tuple[float, str] | None = None
    for entry in siblings.split(os.pathsep):
        if not entry:
            continue
        path = Path(entry) / rundir.LOSS
        try:
            rows = rundir.read_loss_csv(path).rows
        except (OSError, ValueError):  # not started, gone, or not a loss.csv yet
            continue
        for row in rows:
            if row.step == step and row.val_loss is not None and math.isfinite(row.val_loss):
                if best is None or row.val_loss < best[0]:
                    best = (row.val_loss, Path(entry).name)
    return best


def prune_reason(trainer_cfg: Any, step: int, val: float) -> str | None:
    """Why the run stops at ``step`` with held-out NLL ``val``; None if it goes on."""
    margin = trainer_cfg.prune_margin
    if margin <= 0 or not trainer_cfg.prune_siblings or step < trainer_cfg.prune_after:
        return None
    best = best_sibling(trainer_cfg.prune_siblings, step)
    if best is None or not val > best[0] + margin:
        return None
    return (
        f"pruned at step {step}: held-out NLL {val:.4f} is more than {margin:g} above {best[0]:.4f} "
        f"of sibling {best[1]} at that step"
    )
