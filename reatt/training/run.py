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
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from reatt import __version__, rundir
from reatt.errors import ReattError, RunDirError
from reatt.files import utc_iso
from reatt.rundir import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, FinalRecord, LossLog, LossRow
from reatt.training.checkpoint import load_checkpoint, save_checkpoint
from reatt.training.config import CfgNode, check_config, flatten, get_default_config
from reatt.training.progress import TrainProgress, print_help

# keys that change how a run executes, not what it computes: they may differ on resume
EXECUTION_KEYS = {"system.work_dir", "system.num_threads", "trainer.num_workers"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


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
    """'key: old -> new' for every computation-relevant key that differs."""
    old_flat = flatten({k: old[k] for k in ("system", "data", "model", "trainer") if k in old})
    diffs = []
    for key, value in new.flat():
        if key in EXECUTION_KEYS:
            continue
        before = old_flat.get(key, "<missing>")
        if isinstance(value, tuple):
            value = list(value)
        if before != value:
            diffs.append(f"{key}: {before!r} -> {value!r}")
    return diffs


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
        """Refuse a work dir holding a different run; nothing is written before this passes."""
        if self.dir.exists() and not self.dir.is_dir():
            raise RunDirError(f"system.work_dir={str(self.dir)!r} exists and is not a directory")
        cfg_path = self.dir / rundir.CONFIG
        if cfg_path.exists():
            try:
                old = rundir.read_json(cfg_path) or {}
            except (OSError, ValueError) as e:
                raise RunDirError(
                    f"{cfg_path}: unreadable ({e}); move it away or use another system.work_dir"
                ) from None
            diffs = config_differences(old, self.cfg)
            if diffs:
                raise RunDirError(
                    f"{self.dir} holds a run with a different config ("
                    + "; ".join(diffs[:5])
                    + ("; ..." if len(diffs) > 5 else "")
                    + "); use another system.work_dir, or remove that one to start over"
                )
        elif self.ckpt_path.exists():
            raise RunDirError(
                f"{self.dir} has ckpt.pt but no config.json; cannot tell which run it belongs to"
            )
        final = rundir.read_final(self.dir)  # unreadable: not a completed run
        self.already_completed = bool(final and final.record and final.record.completed)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal_received = signal.Signals(signum).name

    def execute(self) -> int:
        if self.already_completed:
            print(f"{self.dir}: already completed (final.json); nothing to do")
            return EXIT_OK
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            lock, warning = rundir.lock_work_dir(self.dir)
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
        self.t_start = time.time()
        self.elapsed_before = 0.0
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            return self._train()
        except Exception as e:  # a real failure: record it, keep the traceback of a bug in the log
            if not isinstance(e, ReattError):
                traceback.print_exc()
            message = str(e) if isinstance(e, ReattError) else f"{type(e).__name__}: {e}"
            self._final_record(rundir.FINAL_FAILED, error=message).write(self.dir)
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
        model = GPT(cfg.model, vocab_size=train_ds.vocab_size, block_size=cfg.data.block_size).to(self.device)
        self.model_info = model.describe()
        self.trainer = Trainer(cfg.trainer, model, train_ds, eval_x, eval_y, self.device)
        return train_ds, eval_ds

    def _train(self) -> int:
        cfg = self.cfg
        train_ds, eval_ds = self._setup()
        trainer = self.trainer
        resume = self.ckpt_path.exists()
        if resume:
            self.elapsed_before = load_checkpoint(self.ckpt_path, trainer, self.device)
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
            if self.signal_received is None:
                trainer.run()
            if self.signal_received is not None and trainer.iter_num < cfg.trainer.max_iters:
                self._save_checkpoint()
                self.progress.message(
                    f"{self.signal_received}: checkpoint saved at step {trainer.iter_num}; "
                    f"exiting {EXIT_INTERRUPTED} (run again to resume)"
                )
                return EXIT_INTERRUPTED
            if self.final_val is None:  # resumed from a checkpoint taken at the last step
                self.final_val = trainer.evaluate()
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
        save_checkpoint(self.ckpt_path, self.trainer, self.elapsed(), self.cfg.to_dict())

    def _write_start_files(self, train_ds: Any, eval_ds: Any, resumed_from: int | None) -> None:
        import torch

        rundir.write_args(self.dir, self.argv)
        meta = {
            "reatt_version": __version__,
            "git_commit": git_commit(),
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
            "device": self.device_desc,
            "argv": self.argv,
            "started_at": utc_iso(),
            "resumed_from_step": resumed_from,
            "model": self.model_info,
            "n_params": self.model_info["n_params"],
            "n_params_non_embedding": self.model_info["n_params_non_embedding"],
            "data": {"train": train_ds.describe(), "eval": eval_ds.describe()},
        }
        rundir.write_config(self.dir, self.cfg.to_dict(), meta)

    def _final_record(self, status: str, error: str | None = None) -> FinalRecord:
        from reatt.training.trainer import peak_flops

        t, info = self.trainer, self.model_info
        tokens = t.tokens if t else 0
        train_time = t.train_time if t else 0.0
        tok_s = tokens / train_time if train_time else None
        peak = peak_flops(self.device_desc or "", bool(t and t.autocast_bf16))
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
            n_params=info.get("n_params"),
            n_params_non_embedding=info.get("n_params_non_embedding"),
            skipped_lines=self.skipped_lines,
            error=error,
            finished_at=utc_iso(),
        )
