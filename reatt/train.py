"""Train one variant: ``python -m reatt.train [--key=value ...]``.

Writes the run directory described in docs/run-directory.md: ``args.txt``, ``config.json``,
``loss.csv``, ``samples.txt``, ``ckpt.pt`` and, when the run ends, ``final.json``.
Started again on the same work dir it resumes from ``ckpt.pt``. SIGTERM, SIGUSR1 (what Slurm
sends before a time limit or a preemption) and SIGINT make it checkpoint and exit with
``EXIT_INTERRUPTED``. One process at a time trains a work dir: it holds an exclusive ``flock``
on ``<work_dir>/.lock`` (holding its pid) for the whole run; a second one exits with
``EXIT_USAGE`` without writing anything.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from reatt import __version__
from reatt.atomic import atomic_writer, write_atomic
from reatt.config import (
    CfgNode,
    check_config,
    get_default_config,
    help_rows,
)
from reatt.errors import ReattError, RunDirError
from reatt.rundir import LOSS_COLUMNS, read_json, read_loss_csv, this_host

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: checkpoint saved, start again to resume

# keys that change how a run executes, not what it computes: they may differ on resume
EXECUTION_KEYS = {"system.work_dir", "system.num_threads", "trainer.num_workers"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
LOCK_NAME = ".lock"  # flock-ed by the process training the work dir; holds its "pid host"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, durably and atomically (``reatt.atomic``)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


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
    from reatt.config import flatten

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


def format_loss_row(
    step: int,
    loss: float | None,
    val_loss: float | None,
    lr: float | None,
    tokens: int | None,
    elapsed: float | None,
) -> list[str]:
    """One loss.csv row as written (empty fields for None)."""

    def fmt(value: float | int | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    return [
        str(step),
        fmt(loss, ".6f"),
        fmt(val_loss, ".6f"),
        fmt(lr, ".6e"),
        fmt(tokens, "d"),
        fmt(elapsed, ".3f"),
    ]


class LossLog:
    """loss.csv: a header, then one row per log step, flushed as it goes.

    On resume the complete rows up to the checkpoint's step are kept (parsed by
    ``rundir.read_loss_csv``, written back in the same format), the rest dropped: rows after the
    checkpoint, a torn last line, and malformed lines (reported in ``problems``).
    """

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.rows: list[tuple[Any, ...]] = []  # the rows kept on resume
        self.problems: list[str] = []  # malformed lines dropped on resume
        if resume_step is not None:
            self._keep_rows_up_to(resume_step)
        self._rewrite()
        self.file: TextIO = open(path, "a", newline="")
        self.writer = csv.writer(self.file)

    def _keep_rows_up_to(self, step: int) -> None:
        try:
            if self.path.stat().st_size == 0:  # created, then killed before the header: no rows
                return
            parsed = read_loss_csv(self.path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise RunDirError(
                f"cannot resume: {e}; move {self.path} aside to resume without its rows, "
                f"or remove {self.path.parent} to start over"
            ) from None
        self.rows = [r for r in parsed.rows if r[0] <= step]
        self.problems = parsed.problems

    def _rewrite(self) -> None:
        """The header and the kept rows, replacing the file atomically."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(LOSS_COLUMNS)
        w.writerows(format_loss_row(*row) for row in self.rows)
        write_atomic(self.path, buf.getvalue())

    def loss_at(self, step: int) -> float | None:
        """The ``loss`` of the kept row at ``step``, if any."""
        return next((row[1] for row in reversed(self.rows) if row[0] == step), None)

    def write(
        self, step: int, loss: float | None, val_loss: float | None, lr: float, tokens: int, elapsed: float
    ) -> None:
        self.writer.writerow(format_loss_row(step, loss, val_loss, lr, tokens, elapsed))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


_SAMPLE_HEAD = re.compile(rb"^--- step (\d+) ---$", re.MULTILINE)


def trim_samples(path: Path, step: int) -> None:
    """Drop the blocks of samples.txt (each headed ``--- step N ---``) from steps after ``step``:
    a resumed run writes them again."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return
    cut = next((m.start() for m in _SAMPLE_HEAD.finditer(text) if int(m.group(1)) > step), None)
    if cut is not None:
        write_atomic(path, text[:cut])


def lock_work_dir(directory: Path) -> int:
    """Take the exclusive, non-blocking ``flock`` on ``<directory>/.lock`` and write our pid and
    host into it; returns its file descriptor (the lock lasts until it is closed).

    Raises RunDirError, writing nothing, when another process holds it. Where the filesystem
    has no locks (some NFS mounts: flock raises OSError), warns and goes on unlocked.
    """
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            print(
                f"warning: cannot lock {directory / LOCK_NAME} ({e.strerror or e}): nothing stops "
                "another process from training this work dir at the same time",
                file=sys.stderr,
            )
            return fd
        holder = os.pread(fd, 256, 0).decode(errors="replace").split()
        os.close(fd)
        pid = holder[0] if holder else "unknown"
        where = f" on {holder[1]}" if len(holder) > 1 and holder[1] != this_host() else ""
        raise RunDirError(
            f"{directory} is being trained by another process (pid {pid}{where}); "
            "wait for it to end, or stop it first"
        ) from None
    except ImportError:  # pragma: no cover - not POSIX
        return fd
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {this_host()}\n".encode(), 0)
    return fd


class Progress:
    """A rich progress bar on a terminal; plain lines (for Slurm logs) otherwise."""

    def __init__(self, total: int, start: int) -> None:
        self.total = total
        self.bar = None
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, loss: float | None, val: float | None, lr: float, tok_s: float) -> None:
        parts = [f"step {step}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if val is not None:
            parts.append(f"val {val:.4f}")
        parts += [f"lr {lr:.2e}", f"{tok_s:,.0f} tok/s"]
        line = " | ".join(parts)
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=line.split(" | ", 1)[-1])
            if val is not None:
                self.bar.console.print(line)
        else:
            print(line, flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_help() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="python -m reatt.train [--key=value ...]", title_justify="left")
    for col in ("key", "type", "default", "help"):
        table.add_column(col, overflow="fold")
    for row in help_rows():
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        "Example: python -m reatt.train --model.swiglu=True --trainer.max_iters=500 "
        "--system.work_dir=out/swiglu\nRun directory and exit codes: docs/run-directory.md"
    )


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
        cfg = parse_config(argv)
        run = Run(cfg, argv)
    except ReattError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run.execute()


class Run:
    """One training run in its work dir: setup, resume, loop, final record."""

    def __init__(self, cfg: CfgNode, argv: list[str]) -> None:
        self.cfg, self.argv = cfg, argv
        self.dir = Path(cfg.system.work_dir)
        self.ckpt_path = self.dir / "ckpt.pt"
        self.final_path = self.dir / "final.json"
        self.signal_received: str | None = None
        self.already_completed = False
        self.final_val: float | None = None  # held-out NLL at the last step
        self.final_train: float | None = None  # mean train loss of the last logged interval
        self.trainer: Any = None
        self.model_info: dict[str, Any] = {}
        self.device_desc: str | None = None
        self.skipped_lines = 0
        self._check_work_dir()
        self.device: Any = None
        if not self.already_completed:
            # the device is part of the config's check: a missing GPU is exit 2, nothing written
            from reatt.trainer import device_name, resolve_device

            self.device = resolve_device(cfg.trainer.device)
            self.device_desc = device_name(self.device)

    def _check_work_dir(self) -> None:
        """Refuse a work dir holding a different run; nothing is written before this passes."""
        if self.dir.exists() and not self.dir.is_dir():
            raise RunDirError(f"system.work_dir={str(self.dir)!r} exists and is not a directory")
        cfg_path = self.dir / "config.json"
        if cfg_path.exists():
            try:
                old = read_json(cfg_path) or {}
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
        try:
            final = read_json(self.final_path) or {}
        except (OSError, ValueError):  # unreadable: not a completed run
            final = {}
        self.already_completed = final.get("status") == "completed"

    # --- signals ---
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal_received = signal.Signals(signum).name

    def execute(self) -> int:
        if self.already_completed:
            print(f"{self.dir}: already completed (final.json); nothing to do")
            return EXIT_OK
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = lock_work_dir(self.dir)
        except RunDirError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        try:
            return self._execute_locked()
        finally:
            os.close(lock)

    def _execute_locked(self) -> int:
        try:  # again: another process may have changed the work dir before we held the lock
            self._check_work_dir()
        except ReattError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if self.already_completed:
            print(f"{self.dir}: already completed (final.json); nothing to do")
            return EXIT_OK
        self.final_path.unlink(missing_ok=True)  # a failed attempt's record; this one replaces it
        self.t_start = time.time()
        self.elapsed_before = 0.0
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            return self._train()
        except Exception as e:  # a real failure: record it, keep the traceback of a bug in the log
            if not isinstance(e, ReattError):
                traceback.print_exc()
            message = str(e) if isinstance(e, ReattError) else f"{type(e).__name__}: {e}"
            self._write_final("failed", error=message)
            print(f"error: {message}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.t_start)

    def _train(self) -> int:
        import random

        import numpy as np
        import torch

        from reatt.data import JSONLDataset
        from reatt.model import GPT
        from reatt.trainer import Trainer

        cfg = self.cfg
        if cfg.system.num_threads:
            torch.set_num_threads(cfg.system.num_threads)
        torch.manual_seed(cfg.system.seed)
        np.random.seed(cfg.system.seed % 2**32)
        random.seed(cfg.system.seed)
        device = self.device

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

        model = GPT(cfg.model, vocab_size=train_ds.vocab_size, block_size=cfg.data.block_size).to(device)
        self.model_info = model.describe()
        trainer = Trainer(cfg.trainer, model, train_ds, eval_x, eval_y, device)
        self.trainer = trainer

        resume = self.ckpt_path.exists()
        if resume:
            self._load_checkpoint(trainer, device)
        # before anything else is written: a loss.csv that cannot be resumed stops here
        self.log = LossLog(self.dir / "loss.csv", trainer.iter_num if resume else None)
        try:
            trim_samples(self.dir / "samples.txt", trainer.iter_num)
            self._write_start_files(train_ds, eval_ds, resumed_from=trainer.iter_num if resume else None)
        except BaseException:
            self.log.close()
            raise
        self.progress = Progress(cfg.trainer.max_iters, trainer.iter_num)
        try:
            for problem in self.log.problems:
                self.progress.message(f"warning: dropped a malformed row on resume: {problem}")
            if resume:
                self.progress.message(f"resuming {self.dir} from step {trainer.iter_num}")
            else:
                val = trainer.evaluate()
                self.log.write(0, None, val, trainer.lr, 0, self.elapsed())
                self.progress.update(0, None, val, trainer.lr, 0.0)
            trainer.add_callback("on_batch_end", self._on_batch_end)
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
            self._write_final("completed")
        finally:
            self.progress.close()
            self.log.close()
        return EXIT_OK

    def _on_batch_end(self, trainer: Any) -> None:
        tc = self.cfg.trainer
        step = trainer.iter_num
        last = step >= tc.max_iters
        evaluate = last or step % tc.eval_interval == 0
        if last or evaluate or step % tc.log_interval == 0:
            val = trainer.evaluate() if evaluate else None
            loss = trainer.take_mean_loss()
            if last:
                self.final_val, self.final_train = val, loss
            self.log.write(step, loss, val, trainer.lr, trainer.tokens, self.elapsed())
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

        trainer = self.trainer
        tok = self.tokenizer
        prompt = self.cfg.trainer.sample_prompt
        ids = tok.encode(prompt) if prompt else [tok.eos_token_id]
        gen = torch.Generator(device=trainer.device).manual_seed(self.cfg.system.seed + step)
        x = torch.tensor([ids], dtype=torch.long, device=trainer.device)
        trainer.model.eval()
        with trainer.autocast():
            out = trainer.model.generate(x, self.cfg.trainer.sample_tokens, top_k=40, generator=gen)
        trainer.model.train()
        text = tok.decode(out[0, len(ids) :].tolist())
        block = f"--- step {step} ---\n{prompt}{text}\n"
        self.progress.message(block.rstrip())
        with open(self.dir / "samples.txt", "a", encoding="utf-8") as f:
            f.write(block)

    def _save_checkpoint(self) -> None:
        import torch

        state = {
            "trainer": self.trainer.state_dict(),
            "elapsed_s": self.elapsed(),
            "config": self.cfg.to_dict(),
        }
        with atomic_writer(self.ckpt_path, "wb") as f:  # fsynced: a node crash leaves the old or the new
            torch.save(state, f)

    def _load_checkpoint(self, trainer: Any, device: Any) -> None:
        """Restore the trainer from ckpt.pt; an unusable file is a RunDirError saying what to do."""
        import torch

        try:
            state = torch.load(self.ckpt_path, map_location=device, weights_only=False)
            trainer.load_state_dict(state["trainer"])
            self.elapsed_before = float(state["elapsed_s"])
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # empty or truncated file, not a checkpoint, missing keys...
            raise RunDirError(
                f"{self.ckpt_path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]}); move it "
                f"aside (mv {self.ckpt_path} {self.ckpt_path}.bad) to restart this run from step 0"
            ) from None

    def _write_start_files(self, train_ds: Any, eval_ds: Any, resumed_from: int | None) -> None:
        import torch

        write_atomic(self.dir / "args.txt", "".join(a + "\n" for a in self.argv))
        meta = {
            "reatt_version": __version__,
            "git_commit": git_commit(),
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
            "device": self.device_desc,
            "argv": self.argv,
            "started_at": utc_now(),
            "resumed_from_step": resumed_from,
            "model": self.model_info,
            "n_params": self.model_info["n_params"],
            "n_params_non_embedding": self.model_info["n_params_non_embedding"],
            "data": {"train": train_ds.describe(), "eval": eval_ds.describe()},
        }
        write_json_atomic(self.dir / "config.json", {**self.cfg.to_dict(), "meta": meta})

    def _write_final(self, status: str, error: str | None = None) -> None:
        from reatt.trainer import peak_flops

        t = self.trainer
        info = self.model_info
        tokens = t.tokens if t else 0
        train_time = t.train_time if t else 0.0
        tok_s = tokens / train_time if train_time else None
        device = self.device_desc
        peak = peak_flops(device or "", bool(t and t.autocast_bf16))
        fpt = info.get("flops_per_token")
        mfu = tok_s * fpt / peak if (peak and tok_s and fpt) else None
        write_json_atomic(
            self.final_path,
            {
                "status": status,
                "final_nll": self.final_val if status == "completed" else None,
                "final_train_loss": self.final_train if status == "completed" else None,
                "steps": t.iter_num if t else 0,
                "tokens": tokens,
                "wall_time_s": round(self.elapsed(), 3),
                "train_time_s": round(train_time, 3),
                "tokens_per_s": tok_s,
                "mfu": mfu,
                "flops_per_token": fpt,
                "peak_flops": peak,
                "device": device,
                "n_params": info.get("n_params"),
                "n_params_non_embedding": info.get("n_params_non_embedding"),
                "skipped_lines": self.skipped_lines,
                "error": error,
                "finished_at": utc_now(),
            },
        )


if __name__ == "__main__":
    sys.exit(main())
