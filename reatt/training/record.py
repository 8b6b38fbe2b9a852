"""What a run records about itself: ``config.json``'s ``meta`` at the start, ``final.json``'s
numbers at the end (tokens/s, MFU per device, precision, world size), from the trainer's state.
``reatt.training.run`` decides when; this module only says what."""

from __future__ import annotations

from typing import Any

from reatt import rundir
from reatt.files import utc_iso
from reatt.rundir import FinalRecord


def start_meta(
    trainer: Any, model_info: dict[str, Any], data: dict[str, Any], device_desc: str | None, world_size: int
) -> dict[str, Any]:
    """``config.json``'s ``meta`` (less what ``write_start_files`` adds: versions, commit, argv)."""
    import torch

    return {
        "torch_version": torch.__version__,
        "device": device_desc,
        "started_at": utc_iso(),
        "threads": torch.get_num_threads(),  # CPU results are bit-identical for one thread count
        "world_size": world_size,
        "precision": trainer.precision,  # trainer.precision resolved: "bf16" or "fp32"
        "model": model_info,
        "n_params": model_info["n_params"],
        "n_params_non_embedding": model_info["n_params_non_embedding"],
        "data": data,
    }


def final_record(
    trainer: Any,
    model_info: dict[str, Any],
    *,
    status: str,
    error: str | None,
    final_val: float | None,
    final_train: float | None,
    elapsed_s: float,
    device_desc: str | None,
    world_size: int,
    skipped_lines: int,
) -> FinalRecord:
    """The run's ``final.json``. ``trainer`` is None when the run failed before it existed.
    MFU is per device: tokens/s x FLOPs per token / (world_size x the device's peak)."""
    from reatt.training.trainer import peak_flops

    t = trainer
    tokens = t.tokens if t else 0
    train_time = t.train_time if t else 0.0
    tok_s = tokens / train_time if train_time else None
    precision = t.precision if t else None
    peak = peak_flops(device_desc or "", precision or "fp32")
    fpt = model_info.get("flops_per_token")
    completed = status == rundir.FINAL_COMPLETED
    return FinalRecord(
        status=status,
        final_nll=final_val if completed else None,
        final_train_loss=final_train if completed else None,
        steps=t.iter_num if t else 0,
        tokens=tokens,
        wall_time_s=round(elapsed_s, 3),
        train_time_s=round(train_time, 3),
        tokens_per_s=tok_s,
        mfu=tok_s * fpt / (peak * world_size) if (peak and tok_s and fpt) else None,
        flops_per_token=fpt,
        peak_flops=peak,
        device=device_desc,
        world_size=world_size,
        precision=precision,
        n_params=model_info.get("n_params"),
        n_params_non_embedding=model_info.get("n_params_non_embedding"),
        skipped_lines=skipped_lines,
        error=error,
        finished_at=utc_iso(),
    )
