"""The training loop: AdamW, gradient clipping, a pure LR schedule, held-out evaluation.

``Trainer.run()`` is a plain loop with callbacks (minGPT's ``on_batch_end``); what happens
around it (the run directory, checkpoints, signals, progress) lives in ``reatt.train``.
Everything a resumed run needs to continue exactly as an uninterrupted one is in
``Trainer.state_dict()``: model, optimizer, step, RNG states, loss accumulators, counters.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from reatt.training.config import CfgNode
from reatt.training.distributed import Ranks, check_batch, mean_over_ranks
from reatt.training.precision import autocast, resolve_precision

if TYPE_CHECKING:
    from reatt.training.model import GPT

# Dense bf16 peak FLOP/s of CUDA devices by device-name substring, most specific first (vendor
# datasheets). Devices not listed, CPUs, and fp32 runs get mfu = null: never a guess (a CPU's
# peak depends on its clock under load, its cores' AMX units and the threads torch uses).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10", 125e12),
    ("L4", 121e12),
)


def peak_flops(device_name: str, precision: str) -> float | None:
    """The device's peak dense bf16 FLOP/s if known and the run is in bf16 (``precision``,
    resolved), else None. ``device_name`` as ``device_name()`` gives it ("cpu" matches none)."""
    if precision != "bf16":
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def get_lr(
    it: int,
    *,
    learning_rate: float,
    warmup_steps: int,
    use_cosine: bool,
    min_lr: float,
    max_iters: int,
) -> float:
    """Learning rate at step ``it`` (0-based), a pure function of the schedule settings.

    - warmup (``warmup_steps > 0``): linear from 0 towards ``learning_rate``:
      ``lr * (it + 1) / (warmup_steps + 1)`` for ``it < warmup_steps``, reaching exactly
      ``learning_rate`` at ``it == warmup_steps``;
    - cosine (``use_cosine``): from ``learning_rate`` at ``warmup_steps`` down to ``min_lr``
      at ``max_iters`` (half a cosine period);
    - otherwise constant ``learning_rate``. The two toggles are independent.
    """
    if warmup_steps > 0 and it < warmup_steps:
        return learning_rate * (it + 1) / (warmup_steps + 1)
    if not use_cosine:
        return learning_rate
    progress = min(1.0, (it - warmup_steps) / max(1, max_iters - warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def lr_at(it: int, tc: CfgNode) -> float:
    """``get_lr`` with the settings of a ``trainer`` config node."""
    return get_lr(
        it,
        learning_rate=tc.learning_rate,
        warmup_steps=tc.warmup_steps,
        use_cosine=tc.use_cosine,
        min_lr=tc.min_lr,
        max_iters=tc.max_iters,
    )


def resolve_device(name: str) -> torch.device:
    """The device ``trainer.device`` names, checked against this machine (ConfigError if absent)."""
    from reatt.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name!r} but CUDA is not available on this machine")
        index = name.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f"trainer.device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"trainer.device={name!r}: {e}") from None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


class Divergence(NamedTuple):
    """Where a run's loss stopped being a finite number."""

    step: int
    what: str  # "the training loss is nan", "the held-out NLL is inf"

    def __str__(self) -> str:
        return f"diverged at step {self.step}: {self.what}"


def rank_samples(start_step: int, batch_size: int, ranks: Ranks) -> Iterator[int]:
    """The sample indices of this rank, step after step from ``start_step``: step s trains on
    samples ``s * batch_size + i`` (i < batch_size) whatever the world size, and rank r takes
    the r-th contiguous slice of them (its grad_accum_steps microbatches, in order)."""
    share = batch_size // ranks.world_size
    for step in itertools.count(start_step):
        first = step * batch_size + ranks.rank * share
        yield from range(first, first + share)


class Trainer:
    """Trains ``model`` on batches ``train_dataset[k]``, k = step * batch_size + i: each step's
    batch split over the ranks (DDP averages their gradients) and over ``grad_accum_steps``
    microbatches, so the samples of a step do not depend on the world size."""

    def __init__(
        self,
        config: CfgNode,
        model: GPT,
        train_dataset: Dataset,
        eval_x: torch.Tensor,
        eval_y: torch.Tensor,
        device: torch.device,
        ranks: Ranks | None = None,
        precision: str | None = None,
    ) -> None:
        """``precision``: the resolved precision ("bf16", "fp32") a resumed run keeps (its
        first start's); None resolves ``config.precision`` here."""
        self.config = config
        self.ranks = ranks or Ranks()
        self.accum = int(config.grad_accum_steps)
        self.micro = check_batch(config.batch_size, self.accum, self.ranks.world_size)
        self.model = model  # the plain module: its state_dict is what checkpoints hold
        self.device = device
        self.train_dataset = train_dataset
        self.eval_x, self.eval_y = eval_x, eval_y
        self.optimizer = model.configure_optimizer(config)
        self.precision = precision or resolve_precision(config.precision, device.type)
        self.forward_model: Callable[..., Any] = torch.compile(model) if config.compile else model
        self.train_model: Any = self.forward_model  # what a training step calls: DDP's wrapper on ranks
        if self.ranks.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device] if device.type == "cuda" else None
            ddp = DistributedDataParallel(model, device_ids=ids)
            self.train_model = torch.compile(ddp) if config.compile else ddp
        self.callbacks: dict[str, list[Callable[[Trainer], None]]] = defaultdict(list)
        # progress, all restored on resume
        self.iter_num = 0  # optimizer steps completed
        self.tokens = 0  # training tokens seen
        self.train_time = 0.0  # seconds spent in training steps (evaluation excluded)
        self.loss_sum = 0.0  # train loss summed since the last logged row
        self.loss_count = 0
        self.last_loss = float("nan")  # loss of the latest step
        self.last_mean_loss: float | None = None  # what take_mean_loss last returned (the last row's)
        self.lr = lr_at(0, config)
        self.stop = False  # a callback may set this to end run() after the current step
        self.diverged: Divergence | None = None  # set when the loss becomes non-finite

    # --- callbacks (minGPT style) ---
    def add_callback(self, event: str, fn: Callable[[Trainer], None]) -> None:
        self.callbacks[event].append(fn)

    def trigger_callbacks(self, event: str) -> None:
        for fn in self.callbacks.get(event, []):
            fn(self)

    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast on this device when the run's precision is bf16 (CUDA or CPU)."""
        return autocast(self.device.type, self.precision)

    # --- loss bookkeeping for loss.csv ---
    def take_mean_loss(self) -> float | None:
        """Mean train loss since the previous call (None if no step ran), then reset."""
        if self.loss_count == 0:
            return None
        mean = self.loss_sum / self.loss_count
        self.loss_sum, self.loss_count = 0.0, 0
        self.last_mean_loss = mean
        return mean

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean held-out NLL (nats/token) over the fixed eval windows. One that is not finite
        means the run diverged at this step: it stops there (``diverged``, ``stop``)."""
        was_training = self.model.training
        self.model.eval()
        total, n = 0.0, self.eval_x.size(0)
        bs = self.config.batch_size
        for i in range(0, n, bs):
            x = self.eval_x[i : i + bs].to(self.device)
            y = self.eval_y[i : i + bs].to(self.device)
            with self.autocast():
                _, loss = self.forward_model(x, y)
            total += loss.item() * x.size(0)  # every window has block_size tokens
        self.model.train(was_training)
        mean = total / n
        if not math.isfinite(mean) and self.diverged is None:
            self.diverged, self.stop = Divergence(self.iter_num, f"the held-out NLL is {mean}"), True
        return mean

    def batches(self) -> DataLoader:
        """This rank's microbatches from sample index iter_num * batch_size on: a resumed run
        continues the same stream, never repeating or skipping a batch."""
        bs = self.config.batch_size
        return DataLoader(
            self.train_dataset,
            batch_size=self.micro,
            sampler=rank_samples(self.iter_num, bs, self.ranks),
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating the iterator draws a base seed, which must not come
            # from the global RNG (dropout's), or a resumed run's masks would shift by one draw
            generator=torch.Generator(),
        )

    def run(self) -> None:
        """Train until ``max_iters`` or until a callback sets ``self.stop``."""
        model, cfg = self.model, self.config
        model.train()
        if self.iter_num >= cfg.max_iters:
            return
        micro = iter(self.batches())
        while True:
            t0 = time.perf_counter()
            self.lr = lr_at(self.iter_num, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            self.optimizer.zero_grad(set_to_none=True)
            self.last_loss, tokens = self._forward_backward(micro)  # also waits for the device
            if cfg.grad_norm_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_norm_clip)
            if not math.isfinite(self.last_loss):  # diverged (on every rank): the step is not taken
                self.diverged = Divergence(self.iter_num + 1, f"the training loss is {self.last_loss}")
                break
            self.optimizer.step()
            self.train_time += time.perf_counter() - t0
            self.loss_sum += self.last_loss
            self.loss_count += 1
            self.iter_num += 1
            self.tokens += tokens
            self.trigger_callbacks("on_batch_end")
            if self.stop or self.iter_num >= cfg.max_iters:
                break

    def _forward_backward(self, micro: Iterator[Any]) -> tuple[float, int]:
        """One step's gradients, summed over this rank's microbatches (DDP averages them over
        the ranks at the last one's backward); the step's loss (the mean over all ranks) and
        its tokens (on all ranks)."""
        total: Any = 0.0  # on the device: one wait for it per step, not per microbatch
        tokens = 0
        for i in range(self.accum):
            x, y = next(micro)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = i == self.accum - 1
            sync = nullcontext() if last or not self.ranks.distributed else self.train_model.no_sync()
            with sync:
                with self.autocast():
                    _, loss = self.train_model(x, y)
                (loss / self.accum if self.accum > 1 else loss).backward()
            total = total + loss.detach().float()
            tokens += x.numel() * self.ranks.world_size
        return mean_over_ranks(self.ranks, total / self.accum if self.accum > 1 else total), tokens

    # --- checkpoint state ---
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, in types ``torch.load(weights_only=True)`` accepts: tensors,
        numbers, strings, and lists, tuples and dicts of them (numpy's RNG state as a tensor)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iter_num": self.iter_num,
            "tokens": self.tokens,
            "train_time": self.train_time,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "last_loss": self.last_loss,
            "last_mean_loss": self.last_mean_loss,
            "rng": self.rng_state(),
        }

    def rng_state(self) -> dict[str, Any]:
        """This process's RNG states (torch, python, numpy; CUDA where present)."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": {
                "kind": str(kind),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k in ("iter_num", "tokens", "train_time", "loss_sum", "loss_count", "last_loss"):
            setattr(self, k, state[k])
        self.last_mean_loss = state.get("last_mean_loss")  # absent from older checkpoints
        self.set_rng_state(state["rng"])

    def set_rng_state(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        numpy_rng = rng["numpy"]
        if isinstance(numpy_rng, dict):
            keys = numpy_rng["keys"].numpy().astype(np.uint32)
            numpy_rng = (
                numpy_rng["kind"],
                keys,
                numpy_rng["pos"],
                numpy_rng["has_gauss"],
                numpy_rng["gauss"],
            )
        np.random.set_state(numpy_rng)  # a tuple in checkpoints of reatt before 0.2
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
