"""One run on two ranks through the real Slurm template on the local Slurm (one node, 2 CPUs):
``[slurm] ntasks_per_node = 2`` renders ``--ntasks-per-node=2`` and one srun task per rank
(gloo on CPU, the rendezvous on the first host); Slurm's signal to the job's steps reaches both
ranks, which stop after the same step; rank 0 checkpoints, the job requeues itself and resumes,
and the run ends as one process would have trained it (dropout off: up to float summation order).

What this does not test: two nodes (the local Slurm has one); the srun line is the same for
``nodes = 2``, only MASTER_ADDR is then another host.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from slurm_helpers import REPO_ROOT, SlurmCluster
from test_distributed import TOL, assert_close_rows
from test_slurm_errors import submit_cluster
from test_slurm_integration import loss_rows, wait_until_done

from reatt.study import status
from reatt.study import store as db
from reatt.study.plan import plan_study
from reatt.study.spec import load_spec
from reatt.train import main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ITERS = 60
TRAIN = {
    "model.model_type": '""',
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.n_embd": 16,
    "data.block_size": 16,
    "trainer.batch_size": 4,
    "trainer.max_iters": ITERS,
    "trainer.eval_interval": 20,
    "trainer.eval_windows": 4,
    "trainer.log_interval": 5,
    "trainer.ckpt_interval": 0,
    "system.num_threads": 1,
    "trainer.precision": '"fp32"',  # bit-exact comparisons in fp32 (docs/guarantees.md: bf16 on CPU)
}


def test_a_two_rank_job_is_signalled_requeued_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path):
    base = "\n".join(f"{k} = {v}" for k, v in TRAIN.items())
    spec = tmp_path / "ddp.toml"
    spec.write_text(
        f'[study]\nname = "it-ddp"\nmatrix = "list"\nout_dir = {json.dumps(str(tmp_path / "out"))}\n\n'
        f"[base]\n{base}\n\n"
        '[slurm]\ntime = "00:10:00"\ncpus_per_task = 1\nmem = "1G"\nsignal_seconds = 60\n'
        "ntasks_per_node = 2\n\n[features]\n\n[runs.a]\nfeatures = []\n"
    )
    engine = db.open_db(tmp_path / "results.db")
    plan_study(load_spec(spec), engine)
    result = submit_cluster(engine, "it-ddp", project_dir=str(REPO_ROOT))
    job_id = dict(result.submitted)["a"]
    script = Path(result.scripts[0]).read_text()
    # USR2, the default of a job of several ranks, to every task of its steps
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --signal=USR2@60" in script
    work = Path(status.refresh(engine, "it-ddp")[1][0].work_dir)
    signalled: list[int] = []

    def signal_mid_run(statuses):
        rows = loss_rows(str(work)) if (work / "loss.csv").exists() else []
        if not signalled and len(rows) >= 3:  # both ranks have their handlers set
            # what --signal=USR2@60 sends: every task of the job's steps, not the batch shell
            r = subprocess.run(["scancel", "--signal=USR2", job_id], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            signalled.append(int(rows[-1]["step"]))

    statuses, seen = wait_until_done(engine, "it-ddp", timeout=400, on_poll=signal_mid_run)
    out = (tmp_path / "out" / "slurm" / f"it-ddp-a-{job_id}.out").read_text()
    assert signalled and signalled[0] < ITERS, "the run ended before it could be signalled"
    assert statuses[0].state == "completed", (seen, out)
    assert "2 ranks exited 75" in out and f"requeueing {job_id}" in out and "resuming" in out, out
    final = json.loads((work / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == ITERS
    # one process on the same global batch, uninterrupted
    one = tmp_path / "one"
    argv = [f"--{k}=" + str(v).strip('"') for k, v in TRAIN.items()]
    assert main([*argv, f"--system.work_dir={one}"]) == 0
    assert_close_rows(loss_rows(str(work)), loss_rows(str(one)))
    reference = json.loads((one / "final.json").read_text())
    assert final["final_nll"] == pytest.approx(reference["final_nll"], abs=TOL)
