"""Where a training step of reatt's GPT spends its time on this machine, by kind of work.

    python bench/profile_step.py --model gpt-mini --precision bf16
    python bench/profile_step.py --model gpt-mini --precision bf16 --compile
    python bench/profile_step.py --model gpt-nano --precision fp32 --top 15

reatt's default step (chunked loss) as ``bench/loss.py`` runs it, B 8, block 256,
random tokens, in a fresh process with reatt's GLIBC_TUNABLES, under ``torch.profiler`` (which
adds a little to every op). torch's self CPU time of each op, per step, summed by kind:
GEMMs (``mm``, ``addmm``, ``bmm``), attention (the ``scaled_dot_product`` kernels), code
Inductor generated (``--compile``: the fused elementwise kernels), AdamW (all under its
``step``), and the rest (eager elementwise work: the softmax passes, conversions, norms, GELU,
clipping). Then the ops that
took the most.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loss import NANOGPT, batch, build, train_step  # noqa: E402

from reatt.train import TRAIN_ENV  # noqa: E402

KINDS = (  # (kind, does an op's name say it is one), first match wins
    ("GEMM", lambda n: n in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")),
    ("attention", lambda n: "scaled_dot_product" in n),
    ("Inductor-generated", lambda n: "CompiledFxGraph" in n),
)


def kind_of(name: str) -> str:
    return next((k for k, is_it in KINDS if is_it(name)), "other")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt-mini")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (trainer.compile)")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps (after 3 warm-up steps)")
    ap.add_argument("--top", type=int, default=10, help="how many of the costliest ops to list")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.worker:  # a fresh process with reatt's allocator settings
        env = {**os.environ, **TRAIN_ENV}
        sys.exit(subprocess.run([sys.executable, __file__, "--worker", *sys.argv[1:]], env=env).returncode)

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model, opt = build("reatt chunked", a.model, 256, "cpu", NANOGPT)
    fwd = torch.compile(model) if a.compile else model
    x, y = batch(8, 256, "cpu")
    for _ in range(3):
        train_step(fwd, opt, x, y, a.precision)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            train_step(fwd, opt, x, y, a.precision)
    averages = prof.key_averages()
    events = [(e.key, e.self_cpu_time_total / 1e3 / a.steps) for e in averages]  # ms per step
    total = sum(ms for _, ms in events)
    by_kind: dict[str, float] = {}
    for name, ms in events:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + ms
    # AdamW: everything under its step (its ops are elementwise ones, counted as "other" above)
    adamw = sum(e.cpu_time_total for e in averages if e.key.startswith("Optimizer.step")) / 1e3 / a.steps
    by_kind["AdamW (its step, whole)"] = adamw
    by_kind["other"] -= adamw
    mode = "compiled" if a.compile else "eager"
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; {a.model} {a.precision} {mode}")
    print(f"# {total:,.0f} ms per step under the profiler, {a.steps} steps\n")
    print("| kind | ms per step | share |")
    print("|---|---|---|")
    for k, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {ms:,.1f} | {ms / total:.0%} |")
    print("\n| op | kind | ms per step |")
    print("|---|---|---|")
    for name, ms in sorted(events, key=lambda e: -e[1])[: a.top]:
        print(f"| `{name[:60]}` | {kind_of(name)} | {ms:,.1f} |")


if __name__ == "__main__":
    main()
