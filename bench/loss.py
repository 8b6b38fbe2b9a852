"""The chunked (fused) linear + cross-entropy against the plain loss, and against nanoGPT.

    python bench/loss.py                            # gpt-nano, gpt-micro, gpt-mini; B 8, block 256
    python bench/loss.py --models gpt-mini --rounds 7 --steps 3
    python bench/loss.py --quick                    # a smoke run: small and short, numbers mean little
    python bench/loss.py --device cuda              # on a GPU (peak memory from torch.cuda)

Three parts, every worker a fresh process with reatt's GLIBC_TUNABLES (``reatt.train.TRAIN_ENV``,
what its launchers set), vocabulary 50,257, random tokens:

1. **Training steps** (forward, loss, backward, clip, AdamW), one process per model size in which
   six implementations take turns round by round (the order alternates), so that the machine's
   drift hits them alike: nanoGPT's model (read from a nanoGPT checkout by path, ``--nanogpt``:
   its ``GPT`` and its ``configure_optimizers``; it ties wte and lm_head), reatt's GPT with the
   plain loss (``model.fused_loss=False``) and with the chunked one, each in fp32 and in bf16
   autocast. Reported: median tokens/s over rounds, and the median over rounds of each one's
   ratio to nanoGPT (and chunked to plain) measured in the same round.
2. **Peak memory of a training step**: one fresh process per model size, implementation and
   precision, a few steps; the peak resident set (``ru_maxrss``) less the resident set before
   the first step, on CPU (glibc keeps freed memory under these tunables, so the high-water mark
   is the peak of what was in use); ``torch.cuda.max_memory_allocated`` on CUDA.
3. **The loss alone** (lm_head + cross-entropy, forward and backward) on B x block rows of
   gpt-mini's width: the plain loss and the chunked one at several chunk sizes: peak memory (a
   fresh process each, as in 2) and time (one process, interleaved rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reatt.train import TRAIN_ENV  # noqa: E402

VOCAB = 50257
# a clone of https://github.com/karpathy/nanoGPT beside this repository, or $NANOGPT (its model.py)
NANOGPT = os.environ.get("NANOGPT", str(ROOT.parent / "nanoGPT" / "model.py"))
IMPLS = ("nanoGPT", "reatt plain", "reatt chunked")
PRECISIONS = ("fp32", "bf16")


# ------------------------------------------------------------------------------- the models


def nanogpt_module(path: str) -> Any:
    """nanoGPT's model.py, imported from its checkout by path (never copied here)."""
    if not Path(path).is_file():
        sys.exit(f"error: nanoGPT's model.py not found at {path}; pass --nanogpt PATH (a nanoGPT checkout)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(impl: str, model_type: str, block: int, device: str, nanogpt: str) -> tuple[Any, Any]:
    """(model, AdamW) of one implementation, on ``device``."""
    from reatt.training.config import get_default_config
    from reatt.training.model import GPT
    from reatt.training.schema import MODEL_TYPES

    tc = get_default_config().trainer
    n_layer, n_head, n_embd = MODEL_TYPES[model_type]
    if impl == "nanoGPT":
        ng = nanogpt_module(nanogpt)
        conf = ng.GPTConfig(
            block_size=block,
            vocab_size=VOCAB,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            dropout=0.0,
            bias=True,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter counts
            model = ng.GPT(conf).to(device)
            opt = model.configure_optimizers(tc.weight_decay, tc.learning_rate, tuple(tc.betas), device)
        return model, opt
    cfg = get_default_config().model
    cfg.model_type = model_type
    cfg.fused_loss = impl == "reatt chunked"
    model = GPT(cfg, VOCAB, block).to(device)
    return model, model.configure_optimizer(tc)


def batch(batch_size: int, block: int, device: str) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (batch_size, block), generator=g)
    y = torch.randint(0, VOCAB, (batch_size, block), generator=g)
    return x.to(device), y.to(device)


def train_step(model: Any, opt: Any, x: Any, y: Any, precision: str) -> None:
    """reatt.training.trainer.Trainer.run's step: forward, loss, backward, clip, AdamW."""
    import torch

    from reatt.training.precision import autocast

    with autocast(x.device.type, precision):
        _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    loss.item()  # waits for the device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ the workers


def speed_worker(a: argparse.Namespace) -> dict[str, list[float]]:
    """Part 1: {"impl|precision": [tokens/s per round]}, all in this process, interleaved."""
    import torch

    torch.manual_seed(0)
    models = {impl: build(impl, a.model, a.block, a.device, a.nanogpt) for impl in IMPLS}
    x, y = batch(a.batch, a.block, a.device)
    names = [(impl, p) for impl in IMPLS for p in PRECISIONS]
    for impl, p in names:  # warm up: the first steps allocate, and fill the optimizer state
        for _ in range(2):
            train_step(*models[impl], x, y, p)
    out: dict[str, list[float]] = {f"{i}|{p}": [] for i, p in names}
    for r in range(a.rounds):
        for impl, p in names if r % 2 == 0 else reversed(names):
            sync(a.device)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                train_step(*models[impl], x, y, p)
            sync(a.device)
            out[f"{impl}|{p}"].append(a.steps * x.numel() / (time.perf_counter() - t0))
    return out


def rss_mb() -> float:
    """This process's resident set now, MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_since(device: str, before: float) -> float:
    """MB of the peak in use since ``before`` (rss_mb() then; on CUDA, after a reset)."""
    if device.startswith("cuda"):
        import torch

        return float(torch.cuda.max_memory_allocated()) / 1e6 - before
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3 - before  # ru_maxrss: KB


def start_peak(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        sync(device)
        torch.cuda.reset_peak_memory_stats()
        return float(torch.cuda.memory_allocated()) / 1e6
    return rss_mb()


def memory_worker(a: argparse.Namespace) -> dict[str, float]:
    """Part 2: the peak of a few training steps of one implementation, over what came before."""
    model, opt = build(a.impl, a.model, a.block, a.device, a.nanogpt)
    x, y = batch(a.batch, a.block, a.device)
    before = start_peak(a.device)
    for _ in range(2):
        train_step(model, opt, x, y, a.precision)
    return {"peak_mb": peak_since(a.device, before)}


def loss_inputs(a: argparse.Namespace) -> tuple[Any, Any, Any]:
    import torch

    from reatt.training.schema import MODEL_TYPES

    d = MODEL_TYPES["gpt-mini"][2]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(a.batch * a.block, d, generator=g).to(a.device).requires_grad_()
    w = (torch.randn(VOCAB, d, generator=g) * 0.02).to(a.device).requires_grad_()
    t = torch.randint(0, VOCAB, (a.batch * a.block,), generator=g).to(a.device)
    return h, w, t


def loss_once(h: Any, w: Any, t: Any, chunk: int, precision: str) -> None:
    """The lm_head and the loss, forward and backward: plain (chunk 0) as GPT.forward, or chunked."""
    from torch.nn import functional as F

    from reatt.training.loss import linear_cross_entropy
    from reatt.training.precision import autocast

    with autocast(h.device.type, precision):
        if chunk:
            loss = linear_cross_entropy(h, w, t, chunk=chunk)
        else:
            loss = F.cross_entropy(F.linear(h, w).float(), t, ignore_index=-1)
    loss.backward()
    h.grad = w.grad = None
    sync(str(h.device))


def loss_memory_worker(a: argparse.Namespace) -> dict[str, float]:
    """Part 3, memory: one variant of the loss alone."""
    h, w, t = loss_inputs(a)
    before = start_peak(a.device)
    loss_once(h, w, t, a.chunk, a.precision)
    return {"peak_mb": peak_since(a.device, before)}


def loss_time_worker(a: argparse.Namespace) -> dict[str, list[float]]:
    """Part 3, time: {"chunk|precision": [ms per round]}, interleaved in this process."""
    h, w, t = loss_inputs(a)
    names = [(c, p) for c in [0, *a.chunks] for p in PRECISIONS]
    for c, p in names:
        loss_once(h, w, t, c, p)
    out: dict[str, list[float]] = {f"{c}|{p}": [] for c, p in names}
    for r in range(a.rounds):
        for c, p in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            loss_once(h, w, t, c, p)
            out[f"{c}|{p}"].append((time.perf_counter() - t0) * 1e3)
    return out


WORKERS = {
    "speed": speed_worker,
    "memory": memory_worker,
    "loss-memory": loss_memory_worker,
    "loss-time": loss_time_worker,
}


# ---------------------------------------------------------------------------- the tables


def worker(args: argparse.Namespace, kind: str, **kw: Any) -> Any:
    """Run one worker in a fresh process with reatt's GLIBC_TUNABLES; its JSON answer."""
    env = {**os.environ, **TRAIN_ENV}
    opts = {**{k: getattr(args, k) for k in ("batch", "block", "rounds", "steps", "device", "nanogpt")}, **kw}
    opts["chunks"] = ",".join(map(str, args.chunks))
    cmd = [sys.executable, __file__, f"--worker={kind}", *(f"--{k}={v}" for k, v in opts.items())]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: worker {kind} {kw} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(res: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(res[a], res[b], strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt-nano,gpt-micro,gpt-mini")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per implementation per round")
    ap.add_argument("--chunks", default="128,256,512,1024", help="chunk sizes (rows) of the loss-alone part")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--nanogpt", default=NANOGPT, help="path of nanoGPT's model.py")
    ap.add_argument("--quick", action="store_true", help="smoke run: gpt-nano, B 2, block 64, 1 round")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    for hidden in ("model", "impl", "precision"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.chunks = [int(c) for c in str(args.chunks).split(",") if c]
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    if args.quick:
        args.models, args.batch, args.block, args.rounds, args.steps = "gpt-nano", 2, 64, 1, 1
        args.chunks = [64]
    nanogpt_module(args.nanogpt)  # a missing checkout fails here, before any measurement

    import torch

    threads = torch.get_num_threads()
    print(f"# torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, {args.device}")
    print(f"# B {args.batch}, block {args.block}, vocab {VOCAB}, {args.rounds} rounds x {args.steps} steps")
    print("\n## Training steps: median tokens/s (ratios: median over rounds, same round)\n")
    print(
        "| model | precision | nanoGPT | reatt plain | reatt chunked "
        "| plain / nanoGPT | chunked / nanoGPT | chunked / plain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    models = args.models.split(",")
    for model in models:
        res = worker(args, "speed", model=model)
        for p in PRECISIONS:
            n, pl, ch = (f"{i}|{p}" for i in IMPLS)
            med = [statistics.median(res[k]) for k in (n, pl, ch)]
            print(
                f"| {model} | {p} | {med[0]:,.0f} | {med[1]:,.0f} | {med[2]:,.0f} | "
                f"{ratio(res, pl, n):.2f} | {ratio(res, ch, n):.2f} | {ratio(res, ch, pl):.2f} |",
                flush=True,
            )
    print("\n## Peak memory of a training step, MB over the memory before the first step\n")
    print("| model | precision | nanoGPT | reatt plain | reatt chunked | chunked / plain |")
    print("|---|---|---|---|---|---|")
    for model in models:
        for p in PRECISIONS:
            mb = [worker(args, "memory", model=model, impl=i, precision=p)["peak_mb"] for i in IMPLS]
            print(
                f"| {model} | {p} | {mb[0]:,.0f} | {mb[1]:,.0f} | {mb[2]:,.0f} | {mb[2] / mb[1]:.2f} |",
                flush=True,
            )
    rows = args.batch * args.block
    print(
        f"\n## The loss alone: lm_head + cross-entropy, forward and backward, {rows} rows x 192 -> {VOCAB}\n"
    )
    times = worker(args, "loss-time")
    print("| loss | precision | peak MB | ms (median) | time / plain |")
    print("|---|---|---|---|---|")
    for c in [0, *args.chunks]:
        for p in PRECISIONS:
            mb = worker(args, "loss-memory", chunk=c, precision=p)["peak_mb"]
            name = "plain" if c == 0 else f"chunked, {c} rows"
            rel = ratio(times, f"{c}|{p}", f"0|{p}")
            print(
                f"| {name} | {p} | {mb:,.0f} | {statistics.median(times[f'{c}|{p}']):,.1f} | {rel:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
