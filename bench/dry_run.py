"""Benchmark `reatt submit --cluster --dry-run` (rendering and writing every sbatch script) on a
large study, side by side with another checkout of reatt (an anchor, e.g. an older commit).

    python bench/dry_run.py                                # 6,144 jobs: 2,048 variants x 3 seeds
    python bench/dry_run.py --anchor /path/to/old/checkout --rounds 3

Each round plans the study once per checkout (into its own database), then times the dry run
of each, interleaved, each in a new process as a user runs it; the table gives the median and
the range of the rounds. Nothing is submitted: no Slurm is needed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_spec(path: Path, out_dir: Path, features: int, seeds: int) -> int:
    """A factorial study: 2**features variants x seeds jobs; returns the number of jobs."""
    keys = ["model.swiglu", "model.rmsnorm", "model.rope", "trainer.use_cosine"]
    lines = ["[study]", 'name = "big"', 'matrix = "factorial"', f"seeds = {list(range(1, seeds + 1))}"]
    lines += [f'out_dir = "{out_dir}"', "[base]", 'model.model_type = "gpt-nano"', "[features]"]
    for i in range(features):
        over = f'"{keys[i]}" = true' if i < len(keys) else f'"trainer.weight_decay" = {0.01 * i}'
        lines.append(f"f{i} = {{ {over} }}")
    lines += ["[slurm]", 'time = "01:00:00"']
    path.write_text("\n".join(lines) + "\n")
    return 2**features * seeds


def reatt(checkout: Path, cwd: str, *args: str) -> float:
    """Seconds of one `python -m reatt ...` of ``checkout`` (stdout discarded). It runs in
    ``cwd``, not here: `python -m` puts the current directory first on the path."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    t0 = time.perf_counter()
    argv = [sys.executable, "-m", "reatt", *args]
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=11, help="factorial over this many features")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--anchor", type=Path, help="another reatt checkout, timed beside this one")
    args = ap.parse_args()
    checkouts = {"this checkout": ROOT}
    if args.anchor:
        checkouts["anchor"] = args.anchor.resolve()
    times: dict[str, list[float]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory(prefix="reatt-bench-dry-run-") as tmp:
        spec = Path(tmp) / "big.toml"
        n = write_spec(spec, Path(tmp) / "out", args.features, args.seeds)
        for name, checkout in checkouts.items():
            reatt(checkout, tmp, "plan", str(spec), "--db", str(Path(tmp) / f"{hash(name)}.db"))
        for _ in range(args.rounds):
            for name, checkout in checkouts.items():
                db = str(Path(tmp) / f"{hash(name)}.db")
                times[name].append(reatt(checkout, tmp, "submit", "--cluster", "--dry-run", "--db", db))
    print(f"`reatt submit --cluster --dry-run` of {n:,} jobs, {args.rounds} rounds, seconds")
    print("\n| checkout | median | range |\n| --- | ---: | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} |")
    if args.anchor:
        ratio = statistics.median(times["anchor"]) / statistics.median(times["this checkout"])
        print(f"\nthis checkout is {ratio:.1f}x faster than the anchor (medians, same run)")


if __name__ == "__main__":
    main()
