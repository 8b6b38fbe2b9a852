"""One training run in its work dir: ``python -m reatt.train [--key=value ...]`` (``reatt.train``).

Writes the run directory described in docs/run-directory.md through ``reatt.rundir``:
``args.txt``, ``config.json``, ``loss.csv``, ``samples.txt``, ``ckpt.pt`` and, when the run ends,
``final.json``. Started again on the same work dir it resumes from ``ckpt.pt``. SIGTERM, SIGUSR1
(what Slurm sends before a time limit or a preemption) and SIGINT make it checkpoint and exit
with ``EXIT_INTERRUPTED``. One process at a time trains a work dir: it holds the exclusive lock
``<work_dir>/.lock`` (holding its pid) for the whole run; a second one exits with
``EXIT_USAGE`` without writing anything. torch is imported only once training starts.

Under torchrun (``reatt.training.distributed``) every rank runs this, rank 0 alone writes; a
stop signal to any rank stops all after the same step (the flag is all-reduced each step).
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
from reatt.errors import ReattError
from reatt.files import remove_temp_files
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
from reatt.training import distributed
from reatt.training.checkpoint import load_checkpoint, restore, save_checkpoint, uses_rng
from reatt.training.config import CfgNode, check_config, get_default_config
from reatt.training.distributed import NoLossLog
from reatt.training.progress import TrainProgress, print_help
from reatt.training.pruning import prune_reason
from reatt.training.record import final_record, start_meta
from reatt.training.sampling import sample_block
from reatt.training.workdir import (
    DATA_IDENTITY,
    check_same_data,
    check_work_dir,
    lock_or_say_why,
    lock_work_dir,  # noqa: F401 (tests/test_run.py takes it from here)
    recorded_precision,
    write_start_files,
)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


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
        self.threads_before = 0  # torch's thread count before system.num_threads set it
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
        self.ranks = distributed.ranks_from_env()
        distributed.check_batch(cfg.trainer.batch_size, cfg.trainer.grad_accum_steps, self.ranks.world_size)
        self.already_completed = check_work_dir(self.dir, self.cfg)
        self.device: Any = None
        if not self.already_completed:
            # the device is part of the config's check: a missing GPU is exit 2, nothing written
            from reatt.training.trainer import device_name, resolve_device

            self.device = distributed.rank_device(self.ranks, resolve_device(cfg.trainer.device))
            self.device_desc = device_name(self.device)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal_received = signal.Signals(signum).name

    def execute(self) -> int:
        if self.already_completed:
            if self.ranks.main:
                print(f"{self.dir}: already completed (final.json); nothing to do")
            return EXIT_OK
        distributed.init(self.ranks, self.device)
        try:
            return self._execute_ranks()
        finally:
            distributed.close(self.ranks)

    def _execute_ranks(self) -> int:
        # the lock is rank 0's (None: refused, and said why): the others follow its outcome
        lock = lock_or_say_why(self.dir) if self.ranks.main else None
        code = distributed.from_main(self.ranks, EXIT_USAGE if self.ranks.main and lock is None else None)
        if code is not None:
            return int(code)
        try:
            return self._execute_locked()
        finally:
            if lock is not None:
                lock.release()

    def _execute_locked(self) -> int:
        code = distributed.from_main(self.ranks, self._recheck_locked() if self.ranks.main else None)
        if code is not None:
            return int(code)
        self.t_start = time.time()
        self.elapsed_before = 0.0
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            code = self._train()
            distributed.barrier(self.ranks)  # no rank exits while rank 0 still writes
            return code
        except Exception as e:  # a real failure: record it, keep the traceback of a bug in the log
            if isinstance(e, ReattError):
                message = str(e)
            elif isinstance(e, OSError):  # the machine's (a full disk, a permission): no traceback
                message = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            else:
                traceback.print_exc()
                message = f"{type(e).__name__}: {e}"
            try:
                if self.ranks.main:
                    self._final_record(rundir.FINAL_FAILED, error=message).write(self.dir)
            except OSError as again:
                message += f" (and final.json could not be written: {again.strerror or again})"
            print(f"error: {message}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if self.threads_before:
                import torch

                torch.set_num_threads(self.threads_before)

    def _recheck_locked(self) -> int | None:
        """Rank 0, holding the lock: the work dir checked again (another process may have changed
        it before we held the lock), a failed attempt's leftovers removed; an exit code to stop."""
        try:
            self.already_completed = check_work_dir(self.dir, self.cfg)
        except ReattError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if self.already_completed:
            print(f"{self.dir}: already completed (final.json); nothing to do")
            return EXIT_OK
        (self.dir / rundir.FINAL).unlink(missing_ok=True)  # a failed attempt's; this one replaces it
        remove_temp_files(self.dir)  # of writers killed mid-write (ckpt.pt's can be large): we hold the lock
        return None

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
        if cfg.system.num_threads:  # given back when the run ends (a caller in this process)
            self.threads_before = torch.get_num_threads()
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
        if self.skipped_lines and self.ranks.main:
            print(
                f"warning: skipped {self.skipped_lines} bad line(s) of {train_ds.source_path} "
                "(data.skip_bad_lines=True); the first ones are listed in config.json's meta.data",
                file=sys.stderr,
            )
        model = GPT(
            cfg.model, vocab_size=train_ds.vocab_size, block_size=cfg.data.block_size, seed=cfg.system.seed
        ).to(self.device)
        self.model_info = model.describe()
        distributed.seed_rank(self.ranks, cfg.system.seed)  # each rank's own dropout stream
        # a resume keeps the precision its first start resolved trainer.precision='auto' to
        resumed_auto = cfg.trainer.precision == "auto" and self.ckpt_path.exists()
        kept = recorded_precision(self.dir) if resumed_auto else None
        self.trainer = Trainer(
            cfg.trainer, model, train_ds, eval_x, eval_y, self.device, self.ranks, precision=kept
        )
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
            self.elapsed_before = restore(self.ckpt_path, trainer, state, uses_rng(cfg))
        # before anything else is written: a loss.csv that cannot be resumed stops here
        resume_step = trainer.iter_num if resume else None  # rank 0 alone writes loss.csv:
        self.log: Any = LossLog(self.dir / rundir.LOSS, resume_step) if self.ranks.main else NoLossLog()
        try:
            if self.ranks.main:
                rundir.trim_samples(self.dir / rundir.SAMPLES, trainer.iter_num)
                self._write_start_files(train_ds, eval_ds, resumed_from=trainer.iter_num if resume else None)
        except BaseException:
            self.log.close()
            raise
        self.progress = TrainProgress(cfg.trainer.max_iters, trainer.iter_num, show=self.ranks.main)
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
            if not self._stop_requested() and trainer.diverged is None:  # on no rank, before step 1
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
                self._write_final(replace(record, diverged_at=trainer.diverged.step))
                return EXIT_DIVERGED
            if self.pruned is not None:  # behind a sibling candidate: a tuning result, not a failure
                step, val, why = self.pruned
                self.progress.message(f"{why}; stopped (final.json: pruned)")
                record = self._final_record(rundir.FINAL_PRUNED, error=why)
                self._write_final(replace(record, final_nll=val, pruned_at=step))
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
            self._write_final(self._final_record(rundir.FINAL_COMPLETED))
        finally:
            self.progress.close()
            self.log.close()
        return EXIT_OK

    def on_batch_end(self, trainer: Any) -> None:
        """The trainer's ``on_batch_end`` callback: log, evaluate, sample, checkpoint, stop."""
        tc = self.cfg.trainer
        stopping = self._stop_requested()
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
            # siblings' files, read by rank 0: every rank takes its decision
            why = distributed.from_main(self.ranks, prune_reason(tc, step, val) if self.ranks.main else None)
            if why is not None:
                self.pruned, trainer.stop = (step, val, why), True
                return
        if tc.sample_interval and step % tc.sample_interval == 0 and self.ranks.main:
            self._sample(step)
        if tc.ckpt_interval and step % tc.ckpt_interval == 0 and not last:
            self._save_checkpoint()
        if stopping:
            trainer.stop = True

    def _sample(self, step: int) -> None:
        block = sample_block(self.trainer, self.tokenizer, self.cfg, step)
        self.progress.message(block.rstrip())
        with open(self.dir / rundir.SAMPLES, "a", encoding="utf-8") as f:
            f.write(block)

    def _save_checkpoint(self) -> None:  # on every rank: their RNG states are gathered
        save_checkpoint(self.ckpt_path, self.trainer, self.elapsed(), self.cfg.to_dict(), self.data)

    def _stop_requested(self) -> bool:
        """Whether a stop signal came to any rank (every rank calls this at the same step)."""
        if distributed.any_rank(self.ranks, self.signal_received is not None, self.device):
            self.signal_received = self.signal_received or "a stop signal to another rank"
        return self.signal_received is not None

    def _write_final(self, record: FinalRecord) -> None:
        if self.ranks.main:
            record.write(self.dir)

    def _write_start_files(self, train_ds: Any, eval_ds: Any, resumed_from: int | None) -> None:
        data = {"train": train_ds.describe(), "eval": eval_ds.describe()}
        meta = start_meta(self.trainer, self.model_info, data, self.device_desc, self.ranks.world_size)
        write_start_files(self.dir, self.cfg, self.argv, meta, resumed_from)

    def _final_record(self, status: str, error: str | None = None) -> FinalRecord:
        return final_record(
            self.trainer,
            self.model_info,
            status=status,
            error=error,
            final_val=self.final_val,
            final_train=self.final_train,
            elapsed_s=self.elapsed(),
            device_desc=self.device_desc,
            world_size=self.ranks.world_size,
            skipped_lines=self.skipped_lines,
        )
