"""Two kernel choices of reatt's CPU training step, measured side by side in one process.

    python bench/kernels.py
    python bench/kernels.py --rounds 9

1. **Attention under bf16 autocast on a CPU**: torch's causal ``scaled_dot_product_attention``
   (its CPU flash kernel), forward and backward, as ``CausalSelfAttention`` calls it: on the bf16
   q, k, v views of the c_attn output (before), against fp32 copies of them and the result cast
   back to bf16 (now, the casts included), at B 8, block 256 and gpt-mini's 6 heads of 32.
2. **AdamW**: ``torch.optim.AdamW`` one step, the for-loop implementation (torch's CPU default,
   reatt's) against ``fused=True`` (faster, not used now: ``GPT.configure_optimizer`` says why), over
   the parameters of gpt-mini (untied: two 50,257 x 192 matrices and the blocks).

Median ms over rounds, the variants alternating; reatt's GLIBC_TUNABLES as in its runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reatt.train import TRAIN_ENV  # noqa: E402


def medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for f in fns.values():
        f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            fns[k]()
            out[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in out.items()}


def attention(rounds: int) -> dict[str, float]:
    """As ``CausalSelfAttention`` runs it under bf16 autocast: q, k, v strided views of the bf16
    c_attn output, the kernel on them (before) or on fp32 copies, cast back to bf16 (now)."""
    import torch
    from torch.nn import functional as F

    B, T, H, hs = 8, 256, 6, 32
    qkv = torch.randn(B, T, 3 * H * hs, generator=torch.Generator().manual_seed(0)).bfloat16()
    qkv.requires_grad_()

    def step(in_fp32: bool) -> Callable[[], None]:
        def run() -> None:
            q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in qkv.split(H * hs, dim=2))
            if in_fp32:
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
                y = y.to(torch.bfloat16)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y.transpose(1, 2).contiguous().view(B, T, H * hs).sum().backward()
            qkv.grad = None

        return run

    return medians({"bf16": step(False), "fp32": step(True)}, rounds)


def adamw(rounds: int) -> dict[str, float]:
    import torch

    from reatt.training.schema import MODEL_TYPES

    n_layer, _, d = MODEL_TYPES["gpt-mini"]
    shapes = [(50257, d), (50257, d), (256, d)] + [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * n_layer
    fns = {}
    for name, kw in (("for-loop", {}), ("fused", {"fused": True})):
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        fns[name] = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), **kw).step
    return medians(fns, rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.worker:  # a fresh process with reatt's allocator settings
        env = {**os.environ, **TRAIN_ENV}
        sys.exit(
            subprocess.run([sys.executable, __file__, "--worker", f"--rounds={a.rounds}"], env=env).returncode
        )

    import torch

    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads; median ms over {a.rounds} rounds\n"
    )
    att, opt = attention(a.rounds), adamw(a.rounds)
    print("| kernel | A | B | A / B |")
    print("|---|---|---|---|")
    print(
        f"| attention fwd+bwd, bf16 autocast | bf16: {att['bf16']:.1f} | fp32, reatt's: {att['fp32']:.1f} "
        f"| {att['bf16'] / att['fp32']:.2f} |"
    )
    print(
        f"| AdamW step, gpt-mini | for-loop, reatt's: {opt['for-loop']:.1f} | fused: {opt['fused']:.1f} "
        f"| {opt['for-loop'] / opt['fused']:.2f} |"
    )


if __name__ == "__main__":
    main()
