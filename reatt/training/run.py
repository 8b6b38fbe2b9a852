"""One training run in its work dir: ``python -m reatt.train [--key=value ...]`` (``reatt.train``).

Writes the run directory described in docs/run-directory.md through ``reatt.rundir``:
``args.txt``, ``config.json``, ``loss.csv``, ``samples.txt``, ``ckpt.pt`` and, when the run ends,
``final.json``. Started again on the same work dir it resumes from ``ckpt.pt``. SIGTERM, SIGUSR1
(what Slurm sends before a time limit or a preemption) and SIGINT make it checkpoint and exit
with ``EXIT_INTERRUPTED``. One process at a time trains a work dir: it holds the exclusive lock
``<work_dir>/.lock`` (holding its pid) for the whole run; a second one exits with
``EXIT_USAGE`` without writing anything. torch is imported only once training starts.
"""

from __future__ import annotations

import copy
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from reatt import rundir
from reatt.errors import ReattError, RunDirError
from reatt.files import remove_temp_files, utc_iso
from reatt.rundir import (
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PRUNED,
    EXIT_USAGE,
    FinalRecord,
    LossLog,
    LossRow,
)
from reatt.training.checkpoint import load_checkpoint, restore, save_checkpoint
from reatt.training.config import CfgNode, check_config, get_default_config
from reatt.training.progress import TrainProgress, print_help
from reatt.training.pruning import prune_reason
from reatt.training.workdir import (
    DATA_IDENTITY,
    check_same_data,
    check_work_dir,
    lock_work_dir,
    recorded_precision,
    write_start_files,
)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def parse_config(argv: list[str]) -> CfgNode:
    cfg = get_default_config()
    cfg.merge_from_args(argv)
    check_config(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return EXIT_OK
    try:
        run = TrainingRun(parse_config(argv), argv)
    except ReattError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run.execute()


class TrainingRun:
    """One training run in its work dir: setup, resume, loop, final record."""

    def __init__(self, cfg: CfgNode, argv: list[str]) -> None:
        self.cfg, self.argv = cfg, argv
        self.dir = Path(cfg.system.work_dir)
        self.ckpt_path = self.dir / rundir.CHECKPOINT
        self.signal_received: str | None = None
        self.already_completed = False
        self.final_val: float | None = None  # held-out NLL at the last step
        self.pruned: tuple[int, float, str] | None = None  # (step, held-out NLL, why) once pruned
        self.final_train: float | None = None  # mean train loss of the last logged interval
        self.trainer: Any = None
        self.model_info: dict[str, Any] = {}
        self.device_desc: str | None = None
        self.skipped_lines = 0
        self.elapsed_before = 0.0
        self.t_start = time.time()
        self._check_work_dir()
        self.device: Any = None
        if not self.already_completed:
            # the device is part of the config's check: a missing GPU is exit 2, nothing written
            from reatt.training.trainer import device_name, resolve_device

            self.device = resolve_device(cfg.trainer.device)
            self.device_desc = device_name(self.device)

    def _check_work_dir(self) -> None:
        self.already_completed = check_work_dir(self.dir, self.cfg)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal_received = signal.Signals(signum).name

    def execute(self) -> int:
        if self.already_completed:
            print(f"{self.dir}: already completed (final.json); nothing to do")
            return EXIT_OK
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock, warning = lock_work_dir(self.dir)
        except OSError as e:
            print(
                f"error: cannot create system.work_dir={str(self.dir)!r}: {e.strerror or e}", file=sys.stderr
            )
            return EXIT_USAGE
        except RunDirError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        try:
            return self._execute_locked()
        finally:
            lock.release()

    def _execute_locked(self) -> int:
        try:  # again: another process may have changed the work dir before we held the lock
            self._check_work_dir()
        except ReattError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if self.already_completed:
            print(f"{self.dir}: already completed (final.json); nothing to do")
            return EXIT_OK
        (self.dir / rundir.FINAL).unlink(missing_ok=True)  # a failed attempt's; this one replaces it
        remove_temp_files(self.dir)  # of writers killed mid-write (ckpt.pt's can be large): we hold the lock
        self.t_start = time.time()
        self.elapsed_before = 0.0
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            return self._train()
        except Exception as e:  # a real failure: record it, keep the traceback of a bug in the log
            if isinstance(e, ReattError):
                message = str(e)
            elif isinstance(e, OSError):  # the machine's (a full disk, a permission): no traceback
                message = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            else:
                traceback.print_exc()
                message = f"{type(e).__name__}: {e}"
            try:
                self._final_record(rundir.FINAL_FAILED, error=message).write(self.dir)
            except OSError as again:
                message += f" (and final.json could not be written: {again.strerror or again})"
            print(f"error: {message}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.t_start)

    def _setup(self) -> tuple[Any, Any]:
        """Seeds, data, model and trainer; returns the (train, eval) datasets."""
        import random

        import numpy as np
        import torch

        from reatt.training.dataset import JSONLDataset
        from reatt.training.model import GPT
        from reatt.training.trainer import Trainer

        cfg = self.cfg
        if cfg.system.num_threads:
            torch.set_num_threads(cfg.system.num_threads)
        torch.manual_seed(cfg.system.seed)
        np.random.seed(cfg.system.seed % 2**32)
        random.seed(cfg.system.seed)

        # data first: every data error is reported before any training starts
        train_ds = JSONLDataset(cfg.data, seed=cfg.system.seed)
        eval_cfg = copy.deepcopy(cfg.data)
        eval_cfg.split = "test"  # check_config holds data.split at "train"
        eval_ds = JSONLDataset(eval_cfg, seed=cfg.system.seed, tokenizer=train_ds.tokenizer)
        eval_x, eval_y = eval_ds.eval_windows(cfg.trainer.eval_windows)
        self.tokenizer = train_ds.tokenizer
        self.skipped_lines = train_ds.skipped_lines
        if self.skipped_lines:
            print(
                f"warning: skipped {self.skipped_lines} bad line(s) of {train_ds.source_path} "
                "(data.skip_bad_lines=True); the first ones are listed in config.json's meta.data",
                file=sys.stderr,
            )
        model = GPT(
            cfg.model, vocab_size=train_ds.vocab_size, block_size=cfg.data.block_size, seed=cfg.system.seed
        ).to(self.device)
        self.model_info = model.describe()
        # a resume keeps the precision its first start resolved trainer.precision='auto' to
        resumed_auto = cfg.trainer.precision == "auto" and self.ckpt_path.exists()
        kept = recorded_precision(self.dir) if resumed_auto else None
        self.trainer = Trainer(cfg.trainer, model, train_ds, eval_x, eval_y, self.device, precision=kept)
        return train_ds, eval_ds

    def _train(self) -> int:
        cfg = self.cfg
        train_ds, eval_ds = self._setup()
        trainer = self.trainer
        described = train_ds.describe()
        self.data = {k: described[k] for k in DATA_IDENTITY}
        resume = self.ckpt_path.exists()
        if resume:
            state = load_checkpoint(self.ckpt_path, self.device)
            check_same_data(self.dir, state.get("data"), self.data)  # before anything is written
            self.elapsed_before = restore(self.ckpt_path, trainer, state)
        # before anything else is written: a loss.csv that cannot be resumed stops here
        self.log = LossLog(self.dir / rundir.LOSS, trainer.iter_num if resume else None)
        try:
            rundir.trim_samples(self.dir / rundir.SAMPLES, trainer.iter_num)
            self._write_start_files(train_ds, eval_ds, resumed_from=trainer.iter_num if resume else None)
        except BaseException:
            self.log.close()
            raise
        self.progress = TrainProgress(cfg.trainer.max_iters, trainer.iter_num)
        try:
            for problem in self.log.problems:
                self.progress.message(f"warning: dropped a malformed row on resume: {problem}")
            if resume:
                self.progress.message(f"resuming {self.dir} from step {trainer.iter_num}")
            else:
                val = trainer.evaluate()
                self.log.write(LossRow(0, None, val, trainer.lr, 0, self.elapsed()))
                self.progress.update(0, None, val, trainer.lr, 0.0)
            trainer.add_callback("on_batch_end", self.on_batch_end)
            if self.signal_received is None and trainer.diverged is None:
                trainer.run()
            if (
                self.final_val is None
                and trainer.diverged is None
                and trainer.iter_num >= cfg.trainer.max_iters
            ):
                # resumed from a checkpoint taken at the last step
                self.final_val = trainer.evaluate()
            if trainer.diverged is not None:  # stopped there: nothing after it would mean anything
                if trainer.loss_count:  # the finite losses since the last row, kept
                    row = LossRow(
                        trainer.iter_num,
                        trainer.take_mean_loss(),
                        None,
                        trainer.lr,
                        trainer.tokens,
                        self.elapsed(),
                    )
                    self.log.write(row)
                self.progress.message(f"error: {trainer.diverged}; stopped (final.json: diverged)")
                record = self._final_record(rundir.FINAL_DIVERGED, error=str(trainer.diverged))
                replace(record, diverged_at=trainer.diverged.step).write(self.dir)
                return EXIT_DIVERGED
            if self.pruned is not None:  # behind a sibling candidate: a tuning result, not a failure
                step, val, why = self.pruned
                self.progress.message(f"{why}; stopped (final.json: pruned)")
                record = self._final_record(rundir.FINAL_PRUNED, error=why)
                replace(record, final_nll=val, pruned_at=step).write(self.dir)
                return EXIT_PRUNED
            if self.signal_received is not None and trainer.iter_num < cfg.trainer.max_iters:
                self._save_checkpoint()
                self.progress.message(
                    f"{self.signal_received}: checkpoint saved at step {trainer.iter_num}; "
                    f"exiting {EXIT_INTERRUPTED} (run again to resume)"
                )
                return EXIT_INTERRUPTED
            if self.final_train is None:  # resumed from a checkpoint taken at the last step:
                # the last row's mean, as an uninterrupted run reports it (older checkpoints lack
                # it: then loss.csv's row at that step, rounded as written)
                self.final_train = trainer.last_mean_loss
                if self.final_train is None:
                    self.final_train = self.log.loss_at(trainer.iter_num)
            self._save_checkpoint()
            self._final_record(rundir.FINAL_COMPLETED).write(self.dir)
        finally:
            self.progress.close()
            self.log.close()
        return EXIT_OK

    def on_batch_end(self, trainer: Any) -> None:
        """The trainer's ``on_batch_end`` callback: log, evaluate, sample, checkpoint, stop."""
        tc = self.cfg.trainer
        step = trainer.iter_num
        last = step >= tc.max_iters
        evaluate = last or step % tc.eval_interval == 0
        if last or evaluate or step % tc.log_interval == 0:
            val = trainer.evaluate() if evaluate else None
            loss = trainer.take_mean_loss()
            if last:
                self.final_val, self.final_train = val, loss
            self.log.write(LossRow(step, loss, val, trainer.lr, trainer.tokens, self.elapsed()))
            tok_s = trainer.tokens / trainer.train_time if trainer.train_time else 0.0
            self.progress.update(step, loss, val, trainer.lr, tok_s)
        if trainer.diverged is not None:  # no sample or checkpoint of a diverged model
            return
        if evaluate and not last and val is not None:
            why = prune_reason(tc, step, val)
            if why is not None:
                self.pruned, trainer.stop = (step, val, why), True
                return
        if tc.sample_interval and step % tc.sample_interval == 0:
            self._sample(step)
        if tc.ckpt_interval and step % tc.ckpt_interval == 0 and not last:
            self._save_checkpoint()
        if self.signal_received is not None:
            trainer.stop = True

    def _sample(self, step: int) -> None:
        import torch

        trainer, tok = self.trainer, self.tokenizer
        prompt = self.cfg.trainer.sample_prompt
        ids = tok.encode(prompt) if prompt else [tok.eos_token_id]
        gen = torch.Generator(device=trainer.device).manual_seed(self.cfg.system.seed + step)
        x = torch.tensor([ids], dtype=torch.long, device=trainer.device)
        trainer.model.eval()
        with trainer.autocast():
            out = trainer.model.generate(x, self.cfg.trainer.sample_tokens, top_k=40, generator=gen)
        trainer.model.train()
        block = rundir.sample_block(step, prompt + tok.decode(out[0, len(ids) :].tolist()))
        self.progress.message(block.rstrip())
        with open(self.dir / rundir.SAMPLES, "a", encoding="utf-8") as f:
            f.write(block)

    def _save_checkpoint(self) -> None:
        save_checkpoint(self.ckpt_path, self.trainer, self.elapsed(), self.cfg.to_dict(), self.data)

    def _write_start_files(self, train_ds: Any, eval_ds: Any, resumed_from: int | None) -> None:
        import torch

        meta = {
            "torch_version": torch.__version__,
            "device": self.device_desc,
            "started_at": utc_iso(),
            "threads": torch.get_num_threads(),  # CPU results are bit-identical for one thread count
            "precision": self.trainer.precision,  # trainer.precision resolved: "bf16" or "fp32"
            "model": self.model_info,
            "n_params": self.model_info["n_params"],
            "n_params_non_embedding": self.model_info["n_params_non_embedding"],
            "data": {"train": train_ds.describe(), "eval": eval_ds.describe()},
        }
        write_start_files(self.dir, self.cfg, self.argv, meta, resumed_from)

    def _final_record(self, status: str, error: str | None = None) -> FinalRecord:
        from reatt.training.trainer import peak_flops

        t, info = self.trainer, self.model_info
        tokens = t.tokens if t else 0
        train_time = t.train_time if t else 0.0
        tok_s = tokens / train_time if train_time else None
        precision = t.precision if t else None
        peak = peak_flops(self.device_desc or "", precision or "fp32")
        fpt = info.get("flops_per_token")
        completed = status == rundir.FINAL_COMPLETED
        return FinalRecord(
            status=status,
            final_nll=self.final_val if completed else None,
            final_train_loss=self.final_train if completed else None,
            steps=t.iter_num if t else 0,
            tokens=tokens,
            wall_time_s=round(self.elapsed(), 3),
            train_time_s=round(train_time, 3),
            tokens_per_s=tok_s,
            mfu=tok_s * fpt / peak if (peak and tok_s and fpt) else None,
            flops_per_token=fpt,
            peak_flops=peak,
            device=self.device_desc,
            precision=precision,
            n_params=info.get("n_params"),
            n_params_non_embedding=info.get("n_params_non_embedding"),
            skipped_lines=self.skipped_lines,
            error=error,
            finished_at=utc_iso(),
        )
