"""Training on several ranks (torch.distributed, gloo on CPU, started by torchrun): the same
sample stream and results as one process, one run directory written by rank 0, exact resume
of every rank after a signal, and clear refusals.

Tolerance: with dropout off, a 2-rank run computes the same global-batch mean gradient as one
process, summed in another order (each rank averages its half, DDP averages the ranks) in
float32: losses and weights agree to 1e-5 (absolute), not bit for bit.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from ddp_grads import step_grads
from run_helpers import assert_same_run

from reatt.rundir import EXIT_INTERRUPTED
from reatt.train import TRAIN_ENV, main

# fp32 (the comparisons are of summation order, not of bf16 rounding, which `auto` would pick on an
# AMX CPU): a 2-rank run sums its gradient in another order than one process, so they agree to
# fp32 rounding, not bit for bit
TOL = 1e-5
TINY = [
    "--trainer.precision=fp32",
    "--model.model_type=",
    "--model.n_layer=1",
    "--model.n_head=2",
    "--model.n_embd=16",
    "--data.block_size=16",
    "--trainer.batch_size=4",
    "--trainer.eval_interval=3",
    "--trainer.eval_windows=4",
    "--trainer.log_interval=1",
    "--trainer.ckpt_interval=0",
    "--system.num_threads=1",
]


def args(work_dir, *extra):
    return [*TINY, f"--system.work_dir={work_dir}", *extra]


def torchrun(n, argv, **kw):
    """``python -m reatt.train`` as ``n`` ranks under torchrun (gloo: CPU)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TRAIN_ENV, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    return subprocess.Popen([*cmd, "-m", "reatt.train", *argv], env=env, **kw)


def rows(work_dir):
    with open(work_dir / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def final(work_dir):
    return json.loads((work_dir / "final.json").read_text())


def ckpt(work_dir):
    return torch.load(work_dir / "ckpt.pt", weights_only=True)


def assert_close_rows(a, b, tol=TOL):
    assert [(r["step"], r["tokens"], r["lr"]) for r in a] == [(r["step"], r["tokens"], r["lr"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "val_loss"):
            assert (ra[key] == "") == (rb[key] == ""), (ra, rb)
            if ra[key]:
                assert float(ra[key]) == pytest.approx(float(rb[key]), abs=tol), (key, ra, rb)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    wd = tmp_path_factory.mktemp("ddp") / "two"
    proc = torchrun(2, args(wd, "--trainer.max_iters=6"), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return wd


def test_two_ranks_train_as_one_process_on_the_same_global_batch(two_ranks, tmp_path):
    one = tmp_path / "one"
    assert main(args(one, "--trainer.max_iters=6")) == 0
    assert_close_rows(rows(two_ranks), rows(one))
    f2, f1 = final(two_ranks), final(one)
    assert (f2["world_size"], f1["world_size"]) == (2, 1)
    assert f2["tokens"] == f1["tokens"] == 6 * 4 * 16  # the global batch, whatever the world size
    assert f2["final_nll"] == pytest.approx(f1["final_nll"], abs=TOL)
    # the weights after 6 AdamW steps: the averaged gradients were the one process's
    w2, w1 = ckpt(two_ranks)["trainer"]["model"], ckpt(one)["trainer"]["model"]
    assert w2.keys() == w1.keys()
    worst = max((w2[k].float() - w1[k].float()).abs().max().item() for k in w1)
    assert worst < TOL, worst
    # rank 0 alone wrote the run directory: the same files as one process
    assert {p.name for p in two_ranks.iterdir()} == {p.name for p in one.iterdir()}
    meta = json.loads((two_ranks / "config.json").read_text())["meta"]
    assert meta["world_size"] == 2


def test_two_ranks_average_to_the_one_process_gradient(tmp_path):
    """The gradients themselves (AdamW's steps barely depend on their scale): the mean over the
    global batch, not a sum over ranks, and not one rank's half."""
    argv = args(tmp_path / "run", "--trainer.max_iters=1", "--trainer.grad_norm_clip=0")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TRAIN_ENV, OMP_NUM_THREADS="1")
    helper = os.path.join(os.path.dirname(__file__), "ddp_grads.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", helper]
    subprocess.run([*cmd, str(tmp_path / "two.pt"), *argv], env=env, check=True, timeout=300)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    one = step_grads(argv)
    assert two.keys() == one.keys()
    for name in one:
        assert torch.allclose(two[name], one[name], rtol=1e-4, atol=1e-7), name
    assert sum(g.abs().sum().item() for k, g in one.items() if k != "loss") > 0


def test_the_checkpoint_holds_every_ranks_rng_state(two_ranks):
    saved = ckpt(two_ranks)["ranks"]
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    # rank 1 draws its dropout masks from its own stream, rank 0 from the single-process one
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])


def test_gradient_accumulation_trains_on_the_same_global_batch(tmp_path):
    one, acc = tmp_path / "one", tmp_path / "acc"
    assert main(args(one, "--trainer.max_iters=3")) == 0
    assert main(args(acc, "--trainer.max_iters=3", "--trainer.grad_accum_steps=2")) == 0
    assert_close_rows(rows(acc), rows(one))


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    wd = tmp_path / "run"
    assert main(args(wd, "--trainer.max_iters=3", "--trainer.grad_accum_steps=2")) == 2
    err = capsys.readouterr().err
    assert "trainer.batch_size=4 must be divisible by the world size (3) x trainer.grad_accum_steps=2" in err
    assert not wd.exists()  # nothing written


def test_a_batch_that_does_not_split_into_microbatches_is_a_config_error(tmp_path, capsys):
    assert main(args(tmp_path / "run", "--trainer.grad_accum_steps=3")) == 2
    assert "trainer.batch_size=4 must be divisible by trainer.grad_accum_steps=3" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_to_torchrun_then_resume_equals_uninterrupted(tmp_path, capsys):
    dropout = ["--model.embd_pdrop=0.1", "--model.resid_pdrop=0.1"]  # each rank's RNG must resume
    steps = "--trainer.max_iters=40"
    ref, wd = tmp_path / "ref", tmp_path / "run"
    reference = torchrun(2, args(ref, steps, *dropout), stdout=subprocess.DEVNULL)
    proc = torchrun(2, args(wd, steps, *dropout), stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # rank 0's progress lines
        if line.startswith("step 3/"):
            break
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to every rank
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun's own: 1 when a worker exits non-zero
    assert "checkpoint saved at step" in out and f"exiting {EXIT_INTERRUPTED}" in out, out
    assert not (wd / "final.json").exists()
    stopped = ckpt(wd)["trainer"]["iter_num"]
    assert 3 <= stopped < 40
    # one process cannot continue two ranks' dropout streams: refused, the checkpoint kept
    before = (wd / "ckpt.pt").read_bytes()
    assert main(args(wd, steps, *dropout)) == 1
    assert "it was saved by a run of 2 rank(s), this one has 1" in final(wd)["error"]
    assert (wd / "ckpt.pt").read_bytes() == before
    again = torchrun(2, args(wd, steps, *dropout), stdout=subprocess.PIPE, text=True)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert f"resuming {wd} from step {stopped}" in out
    assert reference.wait(timeout=300) == 0
    assert_same_run(rows(wd), rows(ref))  # runs of other processes: within float rounding
    assert final(wd)["final_nll"] == pytest.approx(final(ref)["final_nll"], rel=1e-5)


def test_a_resume_on_another_world_size_continues_without_dropout(two_ranks, tmp_path):
    """Without dropout no RNG is drawn in training: model, optimizer and sample stream carry over
    to another number of ranks (here: 2 ranks' last-step checkpoint, resumed by one process)."""
    wd = tmp_path / "run"
    shutil.copytree(two_ranks, wd)
    (wd / "final.json").unlink()  # killed after its last checkpoint, before final.json
    assert main(args(wd, "--trainer.max_iters=6")) == 0
    f, ref = final(wd), final(two_ranks)
    assert f["world_size"] == 1 and f["steps"] == 6
    assert f["final_nll"] == pytest.approx(ref["final_nll"], abs=TOL)
    assert f["final_train_loss"] == pytest.approx(ref["final_train_loss"], abs=TOL)
