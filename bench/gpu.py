"""GPU throughput of reatt's real training program: gpt2-small, bf16, tokens/s and MFU.

    bash bench/gpu.sh                  # all cases, under 5 minutes on one H100/H200
    python bench/gpu.py --steps 40 --cases plain,chunked

Each case is one ``python -m reatt.train`` (or, with several GPUs, ``torchrun
--nproc-per-node=N -m reatt.train``) on the embedded corpus, with bf16 autocast, and
``torch.compile`` off or on, and the plain or the chunked (fused) loss:

- ``plain`` / ``chunked``: one GPU, eager;
- ``plain+compile`` / ``chunked+compile``: one GPU, ``torch.compile`` (its compile time is
  excluded: the rate is read from loss.csv between two rows after the first steps);
- ``ddp`` / ``ddp+compile``: every GPU of the machine, one rank each (only with 2 or more).

Reported per case: the steady-state tokens/s (global, between the row at ``--skip`` steps and
the last row before the final evaluation), and MFU = tokens/s x flops_per_token / (peak of the
device table x devices), with flops_per_token and the peak read from the run's final.json
(a device the table does not know gets no MFU: never a guess). Writes a markdown table to stdout
and, with ``--out``, the same table and each run's final.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reatt.rundir import read_loss_csv  # noqa: E402
from reatt.train import TRAIN_ENV  # noqa: E402

CASES = ("plain", "chunked", "plain+compile", "chunked+compile", "ddp", "ddp+compile")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_args(case: str, work_dir: Path, cache_dir: Path, args: argparse.Namespace) -> list[str]:
    return [
        f"--system.work_dir={work_dir}",
        f"--data.cache_dir={cache_dir}",
        f"--data.block_size={args.block}",
        f"--model.model_type={args.model}",
        f"--model.fused_loss={'chunked' in case or case.startswith('ddp')}",
        f"--trainer.batch_size={args.batch}",
        f"--trainer.max_iters={args.steps}",
        f"--trainer.eval_interval={args.steps}",
        f"--trainer.eval_windows={args.batch}",
        "--trainer.log_interval=5",
        "--trainer.ckpt_interval=0",
        "--trainer.precision=bf16",
        "--trainer.device=cuda",
        f"--trainer.compile={'compile' in case}",
    ]


def steady_rate(work_dir: Path, skip: int) -> float | None:
    """Global tokens/s between the row at step ``skip`` and the last row before the final
    evaluation (whose elapsed time includes that evaluation)."""
    rows = [r for r in read_loss_csv(work_dir / "loss.csv").rows if r.tokens and r.elapsed_s is not None]
    rows = [r for r in rows if r.step >= skip][:-1]
    if len(rows) < 2 or rows[-1].elapsed_s == rows[0].elapsed_s:
        return None
    first, last = rows[0], rows[-1]
    return (last.tokens - first.tokens) / (last.elapsed_s - first.elapsed_s)  # type: ignore[operator]


def run_case(case: str, n_gpus: int, tmp: Path, args: argparse.Namespace) -> dict:
    work_dir = tmp / case.replace("+", "_")
    cmd = [sys.executable, "-m", "reatt.train"]
    devices = 1
    if case.startswith("ddp"):
        devices = n_gpus
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n_gpus}"]
        cmd += ["-m", "reatt.train"]
    cmd += train_args(case, work_dir, tmp / "cache", args)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **TRAIN_ENV}, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    row: dict = {"case": case, "devices": devices, "wall_s": round(wall, 1), "rc": proc.returncode}
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return row
    final = json.loads((work_dir / "final.json").read_text())
    rate = steady_rate(work_dir, args.skip)
    peak, fpt = final.get("peak_flops"), final.get("flops_per_token")
    row.update(
        tokens_per_s=rate,
        mfu=(rate * fpt / (peak * devices)) if (rate and peak and fpt) else None,
        device=final.get("device"),
        final=final,
    )
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| case | devices | tokens/s (steady) | MFU | wall s | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        note = " ".join(r.get("error", [])) if r["rc"] else r.get("device", "")
        lines.append(f"| {r['case']} | {r['devices']} | {rate} | {mfu} | {r['wall_s']} | {note} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--skip", type=int, default=15, help="steps left out of the rate (warm-up, compile)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    n_gpus = gpu_count()
    if n_gpus == 0:
        print("bench/gpu.py: no CUDA device here (torch.cuda.is_available() is False): nothing measured")
        return 2
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    tmp = Path(tempfile.mkdtemp(prefix="reatt-gpu-bench-"))
    rows = []
    try:
        for case in cases:
            if case.startswith("ddp") and n_gpus < 2:
                print(f"{case}: skipped (one GPU here)", flush=True)
                continue
            row = run_case(case, n_gpus, tmp, args)
            print(f"{case}: {row.get('tokens_per_s') or row.get('error')}", flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = (
        f"{args.model}, batch {args.batch} x block {args.block} (global), bf16, "
        f"{args.steps} steps, rate after step {args.skip}\n\n{table(rows)}"
    )
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_bench.md").write_text(text + "\n")
        (args.out / "gpu_bench.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
