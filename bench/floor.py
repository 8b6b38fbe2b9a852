"""How fast could any implementation train this GPT here? The step's matmuls alone, beside nanoGPT.

    python bench/floor.py                         # gpt-nano and gpt-mini, B 8, block 256
    python bench/floor.py --models gpt-mini --rounds 7
    python bench/floor.py --quick                 # a smoke run: numbers mean little

An upper bound on the speedup over nanoGPT that an implementation of the same model can reach
on this machine, measured in one process per model size (reatt's GLIBC_TUNABLES), interleaved
round by round with the steps it bounds:

- **nanoGPT's training step** as it runs on a CPU (fp32; nanoGPT's ``train.py`` uses autocast on
  CUDA only), from a nanoGPT checkout by path (``--nanogpt``, as ``bench/loss.py``).
- **The GEMM floor**: every matrix product of reatt's training step through torch's GEMM, at
  the shapes and layouts the step computes them: for each Linear its forward ``x @ W.T`` and its
  two backward products ``dY @ W`` and ``dY.T @ x``, the lm_head's in reatt's 512-row loss
  chunks, on B x block rows, into preallocated outputs, in fp32 or bf16. Attention's products,
  embeddings, norms, the softmax and AdamW count zero, so the floor is below the step of any
  implementation that computes these products through torch's GEMM (and so writes the logits):
  nanoGPT's step divided by the floor bounds such an implementation's speedup over nanoGPT. A
  kernel that fuses the softmax into the GEMM and never writes the logits is not bounded by it.
- **One pass over the logits**: a read and a write of the (B x block, 50,257) logits (fp32; bf16
  for bf16), a copy. An exact softmax gradient outside a GEMM kernel with a fused epilogue reads
  the logits and writes their gradient at least once; the second bound adds that pass.
- **What reatt reaches**: its default step (chunked loss) eager, and with
  ``trainer.compile`` (``torch.compile(model)``), each in the precision of the row.

The issue's targets (issue 9): 1.5x nanoGPT at gpt-nano in fp32, 3x at gpt-mini in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loss import NANOGPT, VOCAB, batch, build, nanogpt_module, train_step  # noqa: E402

from reatt.train import TRAIN_ENV  # noqa: E402
from reatt.training.config import get_default_config  # noqa: E402

TARGETS = {("gpt-nano", "fp32"): 1.5, ("gpt-mini", "bf16"): 3.0}
REATT = tuple(f"reatt {mode} {p}" for mode in ("eager", "compiled") for p in ("fp32", "bf16"))


def products(model_type: str, rows: int, chunk: int, dtype: Any) -> list[tuple[Any, Any, Any]]:
    """(a, b, out) of every matrix product in a training step of reatt's default GPT, at the
    shapes and layouts it computes them: per Linear ``x @ W.T``, ``dY @ W`` and ``dY.T @ x``,
    the lm_head's in its ``chunk``-row chunks (reatt's loss); attention's are left out."""
    import torch

    from reatt.training.schema import MODEL_TYPES

    n_layer, _, d = MODEL_TYPES[model_type]
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=g).to(dtype)

    def linear(n: int, fan_in: int, fan_out: int) -> list[tuple[Any, Any, Any]]:
        x, w, dy = rand(n, fan_in), rand(fan_out, fan_in), rand(n, fan_out)
        pairs = [(x, w.t()), (dy, w), (dy.t(), x)]
        return [(a, b, torch.empty(a.size(0), b.size(1), dtype=dtype)) for a, b in pairs]

    ops = []
    for fan_in, fan_out in [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]:
        ops += linear(rows, fan_in, fan_out) * n_layer  # the same operands for every layer
    ops += linear(min(chunk, rows), d, VOCAB) * max(1, rows // chunk)
    return ops


def gemm_floor(ops: list[tuple[Any, Any, Any]]) -> Any:
    """A function running all the step's products, each into its preallocated output."""
    import torch

    def run() -> None:
        for a, b, c in ops:
            torch.mm(a, b, out=c)

    return run


def logits_pass(rows: int, dtype: Any) -> Any:
    import torch

    src = torch.randn(rows, VOCAB).to(dtype)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def worker(a: argparse.Namespace) -> dict[str, Any]:
    """{name: [ms per round]} for one model size, interleaved in this process; plus GFLOP."""
    import torch

    torch.manual_seed(0)
    rows = a.batch * a.block
    x, y = batch(a.batch, a.block, "cpu")
    chunk = get_default_config().model.loss_chunk
    run: dict[str, Any] = {}
    ng = build("nanoGPT", a.model, a.block, "cpu", a.nanogpt)
    run["nanoGPT"] = lambda: train_step(*ng, x, y, "fp32")
    for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ops = products(a.model, rows, chunk, dtype)
        run[f"gemm {p}"] = gemm_floor(ops)
        run[f"pass {p}"] = logits_pass(rows, dtype)
    for name in REATT:
        _, mode, p = name.split()
        model, opt = build("reatt chunked", a.model, a.block, "cpu", a.nanogpt)
        fwd = torch.compile(model) if mode == "compiled" else model
        run[name] = lambda fwd=fwd, opt=opt, p=p: train_step(fwd, opt, x, y, p)
    for f in run.values():  # warm up (and compile)
        for _ in range(2):
            f()
    out: dict[str, Any] = {k: [] for k in run}
    names = list(run)
    for r in range(a.rounds):
        for k in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            for _ in range(a.steps):
                run[k]()
            out[k].append((time.perf_counter() - t0) / a.steps * 1e3)
    out["gflop"] = sum(2 * x.size(0) * x.size(1) * w.size(1) for x, w, _ in ops) / 1e9
    return out


def ratio(res: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b) in the same round."""
    return statistics.median(x / y for x, y in zip(res[a], res[b], strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt-nano,gpt-mini")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round")
    ap.add_argument("--nanogpt", default=NANOGPT, help="path of nanoGPT's model.py")
    ap.add_argument("--quick", action="store_true", help="smoke run: gpt-nano, B 2, block 64, 1 round")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if a.quick:
        a.models, a.batch, a.block, a.rounds, a.steps = "gpt-nano", 2, 64, 1, 1
    nanogpt_module(a.nanogpt)  # a missing checkout fails here

    import torch

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(
        f"# B {a.batch}, block {a.block}, vocab {VOCAB}, {a.rounds} rounds x {a.steps} steps; ms are medians"
    )
    print(
        "\n| model | precision | nanoGPT step (fp32) ms | GEMM floor ms (GFLOP/s) | + one logits pass ms "
        "| bound: nanoGPT / floor | bound with the pass | reatt eager ms (x nanoGPT) "
        "| reatt compiled ms (x nanoGPT) | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in a.models.split(","):
        opts = {k: getattr(a, k) for k in ("batch", "block", "rounds", "steps", "nanogpt")}
        cmd = [
            sys.executable,
            __file__,
            "--worker=1",
            f"--model={model}",
            *(f"--{k}={v}" for k, v in opts.items()),
        ]
        done = subprocess.run(cmd, env={**os.environ, **TRAIN_ENV}, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"error: the {model} worker failed:\n{done.stderr[-3000:]}")
        res = json.loads(done.stdout.strip().splitlines()[-1])
        gflop = res.pop("gflop")
        med = {k: statistics.median(v) for k, v in res.items()}
        for p in ("fp32", "bf16"):
            floor, with_pass = med[f"gemm {p}"], med[f"gemm {p}"] + med[f"pass {p}"]
            both = [g + q for g, q in zip(res[f"gemm {p}"], res[f"pass {p}"], strict=True)]
            bound_pass = statistics.median(n / b for n, b in zip(res["nanoGPT"], both, strict=True))
            target = TARGETS.get((model, p))
            print(
                f"| {model} | {p} | {med['nanoGPT']:,.0f} | {floor:,.0f} ({gflop / floor * 1e3:,.0f}) "
                f"| {with_pass:,.0f} | {ratio(res, 'nanoGPT', f'gemm {p}'):.2f} | {bound_pass:.2f} "
                f"| {med[f'reatt eager {p}']:,.0f} ({ratio(res, 'nanoGPT', f'reatt eager {p}'):.2f}) "
                f"| {med[f'reatt compiled {p}']:,.0f} ({ratio(res, 'nanoGPT', f'reatt compiled {p}'):.2f}) "
                f"| {'-' if target is None else f'{target:.1f}x'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
