"""What a run's work dir must hold before a run trains in it, and the record of each start.

- ``lock_work_dir``: the exclusive ``.lock`` (holding "pid host"), so one process trains a dir.
- ``check_work_dir``: a work dir holding another run's config is refused; nothing is written.
- ``check_same_data``: a resume on data other than the one the run started on is refused, and
  says what changed (the content hash, the tokenizer, the split).
- ``write_start_files``: ``args.txt``, and ``config.json`` as the first start writes it; a
  resume keeps that record and adds itself to ``meta.resumes``.
- ``recorded_precision``: the precision the run's first start resolved, which a resume keeps.

A config.json of older reatt lacks the keys added since; each reads as its default, which
computes what that reatt computed (no ``model.tie_weights`` is False, no
``trainer.grad_accum_steps`` is 1), and ``trainer.amp=True`` reads as ``trainer.precision='auto'``
(resolved as that run was: bf16 on CUDA, fp32 on CPU, ``legacy_precision``), ``trainer.amp=False``
as ``'fp32'``. So such a run resumes under today's defaults,
except one started with ``trainer.amp=False``, which is refused unless resumed with
``--trainer.precision=fp32`` (the refusal says so).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from reatt import __version__, rundir
from reatt.errors import RunDirError
from reatt.files import Held, LockBusy, this_host, try_lock
from reatt.training.config import CfgNode, flatten, shown
from reatt.training.precision import recorded_precision as precision_in
from reatt.training.schema import NODES, SCHEMA

# keys that change how a run executes, not what it computes: they may differ on resume (the
# fused loss computes the plain loss, within fp32 rounding, as another thread count does)
EXECUTION_KEYS = {
    "system.work_dir",
    "system.num_threads",
    "trainer.num_workers",
    "model.fused_loss",
    "model.loss_chunk",
}
# what identifies the data a run trains and is evaluated on (JSONLDataset.describe()): a resume
# on data that differs in any of these would continue on other text
DATA_IDENTITY = ("content_sha256", "tokenizer_fingerprint", "test_size", "split_seed", "docs", "tokens")


def git_commit() -> str | None:
    """The commit of the reatt checkout this code runs from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def config_differences(old: dict[str, Any], new: CfgNode) -> list[str]:
    """'key: old -> new' for every computation-relevant key that differs (an old config's
    missing keys read as their defaults, and ``trainer.amp`` as ``trainer.precision``): a key
    added since the run started computes, at its default, what that reatt did."""
    old_flat = flatten({k: old[k] for k in NODES if k in old})
    amp = old_flat.pop("trainer.amp", None)
    if "trainer.precision" not in old_flat and isinstance(amp, bool):
        old_flat["trainer.precision"] = "auto" if amp else "fp32"
    diffs = []
    for key, value in new.flat():
        if key in EXECUTION_KEYS:
            continue
        before = old_flat[key] if key in old_flat else SCHEMA[key].default
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(before, tuple):
            before = list(before)
        if before != value:
            was = f" (trainer.amp={amp})" if key == "trainer.precision" and isinstance(amp, bool) else ""
            diffs.append(f"{key}: {before!r}{was} -> {value!r}")
    return diffs


def lock_work_dir(directory: Path) -> tuple[Held, str | None]:
    """Take the work dir's exclusive ``.lock`` (holding "pid host" of this process) for a run.

    Returns the hold, and a warning where the filesystem has no locks (then nothing stops a
    second process). Raises RunDirError, writing nothing, when another process holds it.
    """
    try:
        held, problem = try_lock(directory / rundir.LOCK, f"{os.getpid()} {this_host()}\n")
    except LockBusy as e:
        pid, host = (e.holder.split() + ["unknown", ""])[:2]
        where = f" on {host}" if host and host != this_host() else ""
        raise RunDirError(
            f"{directory} is being trained by another process (pid {pid}{where}); "
            "wait for it to end, or stop it first"
        ) from None
    if problem is None:
        return held, None
    return held, (
        f"cannot lock {directory / rundir.LOCK} ({problem}): nothing stops another process "
        "from training this work dir at the same time"
    )


def lock_or_say_why(directory: Path) -> Held | None:
    """``lock_work_dir`` after creating the dir; None where it cannot (said on stderr, exit 2)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock, warning = lock_work_dir(directory)
    except OSError as e:
        print(f"error: cannot create system.work_dir={str(directory)!r}: {e.strerror or e}", file=sys.stderr)
        return None
    except RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return lock


def check_work_dir(directory: Path, cfg: CfgNode) -> bool:
    """Refuse a work dir holding a different run (RunDirError); nothing is written before this
    passes. Returns whether the run in it has completed."""
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"system.work_dir={str(directory)!r} exists and is not a directory")
    cfg_path = directory / rundir.CONFIG
    if cfg_path.exists():
        try:
            old = rundir.read_json(cfg_path) or {}
        except (OSError, ValueError) as e:
            raise RunDirError(
                f"{cfg_path}: unreadable ({e}); move it away or use another system.work_dir"
            ) from None
        diffs = config_differences(old, cfg)
        if diffs:
            raise RunDirError(
                f"{directory} holds a run with a different config ("
                + "; ".join(diffs[:5])
                + ("; ..." if len(diffs) > 5 else "")
                + "); use another system.work_dir, or remove that one to start over"
            )
    elif (directory / rundir.CHECKPOINT).exists():
        raise RunDirError(f"{directory} has ckpt.pt but no config.json; cannot tell which run it belongs to")
    final = rundir.read_final(directory)  # unreadable: not a completed run
    return bool(final and final.record and final.record.completed)


def recorded_precision(directory: Path) -> str | None:
    """The resolved precision ("bf16", "fp32") the run in ``directory`` started with, as its
    config.json records it (older reatt: derived from ``trainer.amp``), or None."""
    try:
        old = rundir.read_json(directory / rundir.CONFIG) or {}
    except (OSError, ValueError):
        return None
    return precision_in(old)


def check_same_data(directory: Path, saved: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """Refuse to resume on data other than the checkpoint's (``saved``: its identity in the
    checkpoint; for an older one, in config.json): it would go on training on other text."""
    if saved is None:  # a checkpoint of reatt before 0.2: the record in config.json
        old = rundir.read_json(directory / rundir.CONFIG) or {}
        train = ((old.get("meta") or {}).get("data") or {}).get("train") or {}
        saved = {k: train[k] for k in DATA_IDENTITY if k in train} or None
    if saved is None:
        raise RunDirError(
            f"cannot resume {directory}: neither ckpt.pt nor config.json says which data it trained "
            f"on; move {directory} aside (or give another system.work_dir) to start over"
        )
    changed = [
        f"{k}: {shown(saved.get(k))} -> {shown(now[k])}" for k in DATA_IDENTITY if saved.get(k) != now[k]
    ]
    if changed:
        raise RunDirError(
            f"cannot resume {directory}: its data changed since it started ({'; '.join(changed)}). "
            "Resuming would go on training on other text. Restore the data it started with, or "
            f"move {directory} aside (or give another system.work_dir) to start over"
        )


def write_start_files(
    directory: Path, cfg: CfgNode, argv: list[str], meta: dict[str, Any], resumed_from: int | None
) -> None:
    """args.txt and config.json (``meta``: what this start knows of the run). A resume keeps
    config.json as the run's first start wrote it (the config and the data it trains on) and
    adds itself, with ``meta``'s facts of the moment, to ``meta.resumes``."""
    rundir.write_args(directory, argv)
    common = {"reatt_version": __version__, "git_commit": git_commit(), "argv": argv}
    if resumed_from is None:
        rundir.write_config(
            directory, cfg.to_dict(), {**common, "python_version": sys.version.split()[0], **meta}
        )
        return
    old = rundir.read_json(directory / rundir.CONFIG) or {}
    tree = {k: old[k] for k in NODES if k in old} or cfg.to_dict()
    first = dict(old.get("meta") or {})
    facts = ("torch_version", "device", "started_at", "threads", "world_size")
    now = {k: meta[k] for k in facts if k in meta}
    first["resumes"] = [*(first.get("resumes") or []), {"from_step": resumed_from, **common, **now}]
    rundir.write_config(directory, tree, first)
