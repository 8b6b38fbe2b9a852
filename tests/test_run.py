"""The training program end to end: run directory, determinism, resume, bad input."""

import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from fsync_helpers import record_fsyncs
from run_helpers import assert_same_run

from reatt.errors import RunDirError
from reatt.files import this_host
from reatt.rundir import EXIT_INTERRUPTED
from reatt.train import main
from reatt.training.run import lock_work_dir

# A tiny, fast configuration on the embedded corpus (Python's docs).
TINY = [
    "--trainer.precision=fp32",  # bit-exact comparisons in fp32 (docs/guarantees.md: bf16 on CPU)
    "--data.block_size=32",
    "--trainer.batch_size=4",
    "--trainer.eval_interval=10",
    "--trainer.eval_windows=8",
    "--trainer.log_interval=5",
    "--trainer.ckpt_interval=0",
    "--model.embd_pdrop=0.1",  # dropout draws from the RNG: resume must restore its state
    "--model.resid_pdrop=0.1",
]


def args(work_dir, *extra):
    return [*TINY, f"--system.work_dir={work_dir}", *extra]


def rows(work_dir):
    with open(work_dir / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_time(table):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in table]


def final(work_dir):
    return json.loads((work_dir / "final.json").read_text())


def files(work_dir):
    return {p.name: p.read_bytes() for p in work_dir.iterdir()}


def lock_is_held(work_dir):
    with open(work_dir / ".lock") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_run_directory_and_learning(tmp_path):
    wd = tmp_path / "run"
    argv = args(
        wd,
        "--trainer.max_iters=60",
        "--trainer.learning_rate=3e-3",
        "--trainer.sample_interval=60",
        "--trainer.sample_tokens=8",
        "--model.rope=True",
        "--model.swiglu=True",
        "--model.rmsnorm=True",
    )
    assert main(argv) == 0
    assert (wd / "args.txt").read_text().splitlines() == argv
    cfg = json.loads((wd / "config.json").read_text())
    assert {"system", "data", "model", "trainer", "meta"} <= set(cfg)
    assert cfg["model"]["rope"] is True and cfg["trainer"]["max_iters"] == 60
    meta = cfg["meta"]
    for key in (
        "reatt_version",
        "git_commit",
        "torch_version",
        "device",
        "n_params",
        "n_params_non_embedding",
    ):
        assert key in meta
    assert meta["model"]["n_layer"] == 3 and meta["device"] == "cpu"
    table = rows(wd)
    assert list(table[0]) == ["step", "loss", "val_loss", "lr", "tokens", "elapsed_s"]
    assert [int(r["step"]) for r in table] == list(range(0, 61, 5))
    assert table[0]["loss"] == "" and table[0]["val_loss"] != ""
    assert [r["step"] for r in table if r["val_loss"]] == ["0", "10", "20", "30", "40", "50", "60"]
    assert int(table[-1]["tokens"]) == 60 * 4 * 32
    f = final(wd)
    assert f["status"] == "completed" and f["steps"] == 60 and f["error"] is None
    assert f["final_nll"] == pytest.approx(float(table[-1]["val_loss"]), abs=1e-6)
    start = float(table[0]["val_loss"])
    assert start > 10.0  # ~ln(50257) at init
    assert f["final_nll"] < start - 2.5, (start, f["final_nll"])  # learned well below its start
    assert f["mfu"] is None and f["peak_flops"] is None  # CPU: not in the peak table, never a guess
    assert f["tokens_per_s"] > 0 and f["n_params"] == meta["n_params"]
    samples = (wd / "samples.txt").read_text()
    assert samples.startswith("--- step 60 ---\n") and len(samples) > 20
    assert (wd / "ckpt.pt").exists()


def test_same_config_same_loss_csv(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(args(a, "--trainer.max_iters=12", "--system.seed=7")) == 0
    assert main(args(b, "--trainer.max_iters=12", "--system.seed=7")) == 0
    assert without_time(rows(a)) == without_time(rows(b))
    assert final(a)["final_nll"] == final(b)["final_nll"]
    c = tmp_path / "c"
    assert main(args(c, "--trainer.max_iters=12", "--system.seed=8")) == 0
    assert without_time(rows(a)) != without_time(rows(c))
    # the held-out windows do not depend on the seed: step 0 of an identical model differs only by init
    assert rows(a)[0]["val_loss"] != rows(c)[0]["val_loss"]


def test_completed_run_is_left_alone_and_other_config_refused(tmp_path, capsys):
    wd = tmp_path / "run"
    assert main(args(wd, "--trainer.max_iters=5")) == 0
    before = {p.name: p.read_bytes() for p in wd.iterdir()}
    assert main(args(wd, "--trainer.max_iters=5")) == 0
    assert "already completed" in capsys.readouterr().out
    assert main(args(wd, "--trainer.max_iters=5", "--model.rope=True")) == 2
    err = capsys.readouterr().err
    assert "holds a run with a different config (model.rope: False -> True)" in err
    assert {p.name: p.read_bytes() for p in wd.iterdir()} == before  # nothing lost or changed


def test_bad_data_line_fails_before_training_with_file_and_line(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine line with words"}\n{"txt": "oops"}\n')
    wd = tmp_path / "run"
    assert main(args(wd, f"--data.file_path={data}", "--trainer.max_iters=5")) == 1
    f = final(wd)
    assert f["status"] == "failed" and f"{data.name}:2" in f["error"] and "text" in f["error"]
    assert not (wd / "loss.csv").exists()  # no training started
    assert "bad.jsonl:2" in capsys.readouterr().err


def run_subprocess(argv, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "reatt.train", *argv], env=env, **kw)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_checkpoints_and_resume_equals_uninterrupted(tmp_path, sig):
    steps = "--trainer.max_iters=80"
    ref, wd = tmp_path / "ref", tmp_path / "resumed"
    assert main(args(ref, steps, "--trainer.ckpt_interval=25")) == 0

    proc = run_subprocess(args(wd, steps, "--trainer.ckpt_interval=25"), stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # interrupt once training is under way
        if (wd / "loss.csv").exists() and len(rows(wd)) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast for this test's timing)")
    assert proc.returncode == EXIT_INTERRUPTED, out
    assert "checkpoint saved at step" in out
    assert not (wd / "final.json").exists()
    interrupted_at = len(rows(wd))
    assert 4 <= interrupted_at < 17

    # Slurm's requeue runs the same command again: it resumes and ends like the reference
    again = run_subprocess(args(wd, steps, "--trainer.ckpt_interval=25"), stdout=subprocess.PIPE, text=True)
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out
    assert "resuming" in out
    assert_same_run(rows(wd), rows(ref))  # the reference ran in this process, these in others
    assert final(wd)["final_nll"] == pytest.approx(final(ref)["final_nll"], rel=1e-5)
    steps_logged = [int(r["step"]) for r in rows(wd)]
    assert steps_logged == sorted(set(steps_logged))  # no repeated step


@pytest.mark.parametrize("stop_at", [14, 15, 20])  # a plain step, a logged one, a logged and evaluated one
def test_stopped_at_a_given_step_then_resumed_equals_uninterrupted(tmp_path, monkeypatch, stop_at):
    """The signal test above stops wherever the signal lands; this one stops exactly at a step
    of each kind (SIGTERM to this process from the callback, dropout on) and resumes in a fresh
    process (within float rounding: ``assert_same_run``)."""
    from reatt.training.run import TrainingRun as Run

    conf = ("--trainer.max_iters=30", "--trainer.ckpt_interval=25")
    ref, wd = tmp_path / "ref", tmp_path / "stopped"
    assert main(args(ref, *conf)) == 0
    original = Run.on_batch_end

    def stop(self, trainer):
        if trainer.iter_num == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # its handler only sets the flag
        original(self, trainer)

    monkeypatch.setattr(Run, "on_batch_end", stop)
    assert main(args(wd, *conf)) == EXIT_INTERRUPTED
    monkeypatch.setattr(Run, "on_batch_end", original)
    again = run_subprocess(args(wd, *conf), stdout=subprocess.PIPE, text=True)
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0 and f"from step {stop_at}" in out, out
    assert_same_run(rows(wd), rows(ref))  # resumed in another process
    assert final(wd)["final_nll"] == pytest.approx(final(ref)["final_nll"], rel=1e-5)


def test_crash_then_resume_drops_rows_after_the_checkpoint_and_a_torn_line(tmp_path, monkeypatch):
    from reatt.training.run import TrainingRun as Run

    samples = ("--trainer.sample_interval=11", "--trainer.sample_tokens=4")  # at steps 11 and 22
    conf = ("--trainer.max_iters=30", "--trainer.ckpt_interval=20", *samples)
    ref, wd = tmp_path / "ref", tmp_path / "crashed"
    assert main(args(ref, *conf)) == 0

    original = Run.on_batch_end
    held = []

    def crash_at_23(self, trainer):
        original(self, trainer)
        if trainer.iter_num == 23:  # after the step-20 checkpoint: steps 21-23 are lost
            held.append(lock_is_held(self.dir))
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "on_batch_end", crash_at_23)
    with pytest.raises(KeyboardInterrupt):
        main(args(wd, *conf))
    monkeypatch.setattr(Run, "on_batch_end", original)
    assert not (wd / "final.json").exists()
    assert held == [True] and not lock_is_held(wd)  # the work dir was locked while it trained
    assert (wd / "samples.txt").read_text().count("--- step 22 ---") == 1
    with open(wd / "loss.csv", "a") as f:
        f.write("25,10.1,")  # a torn row, as a killed process can leave it
    lines = (wd / "loss.csv").read_text().split("\n")
    lines.insert(2, "oops,1,2,3,4,5")  # a malformed row (bad disk block, hand edit...)
    (wd / "loss.csv").write_text("\n".join(lines))
    assert main(args(wd, *conf)) == 0
    assert without_time(rows(wd)) == without_time(rows(ref))
    assert final(wd)["final_nll"] == final(ref)["final_nll"]
    # the sample of step 22 (after the checkpoint) was written again, not twice
    assert (wd / "samples.txt").read_text() == (ref / "samples.txt").read_text()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A completed 7-step run (rows at 0, 5 and 7: the last row's loss is a mean of two steps),
    and the names of the files fsynced while it ran."""
    wd = tmp_path_factory.mktemp("finished") / "run"
    mp = pytest.MonkeyPatch()
    paths = record_fsyncs(mp)
    try:
        assert main(args(wd, "--trainer.max_iters=7")) == 0
    finally:
        mp.undo()
    return wd, [os.path.basename(p) for p in paths]


@pytest.fixture
def crashed_at_the_end(tmp_path, finished_run):
    """A copy of the finished run as a crash between its last checkpoint and final.json leaves it."""
    wd = tmp_path / "run"
    shutil.copytree(finished_run[0], wd)
    (wd / "final.json").unlink()
    return wd


def test_the_checkpoint_is_fsynced_before_it_replaces_the_old_one(finished_run):
    _, synced = finished_run
    assert any(name.startswith(".ckpt.pt.tmp-") for name in synced), synced
    assert any(name.startswith(".final.json.tmp-") for name in synced), synced


def test_resuming_a_checkpoint_of_the_last_step_reports_the_same_final_losses(
    crashed_at_the_end, finished_run
):
    wd, ref = crashed_at_the_end, finished_run[0]
    assert main(args(wd, "--trainer.max_iters=7")) == 0
    for key in ("status", "final_nll", "final_train_loss", "steps", "tokens"):
        assert final(wd)[key] == final(ref)[key], key
    assert without_time(rows(wd)) == without_time(rows(ref))


def test_a_loss_csv_with_a_bad_header_stops_the_resume_naming_the_file(crashed_at_the_end, capsys):
    wd = crashed_at_the_end
    (wd / "loss.csv").write_text("what,is,this\n1,2,3\n")
    assert main(args(wd, "--trainer.max_iters=7")) == 1
    err = capsys.readouterr().err
    assert f"cannot resume: {wd / 'loss.csv'}:1: header" in err and "aside" in err
    assert "Traceback" not in err
    assert (wd / "loss.csv").read_text() == "what,is,this\n1,2,3\n"  # left for a look
    assert final(wd)["status"] == "failed" and "loss.csv" in final(wd)["error"]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip"], ids=["empty", "garbage"])
def test_an_unreadable_checkpoint_is_a_clear_error_saying_what_to_do(crashed_at_the_end, capsys, content):
    wd = crashed_at_the_end
    (wd / "ckpt.pt").write_bytes(content)  # e.g. renamed into place unsynced, then a node crash
    assert main(args(wd, "--trainer.max_iters=7")) == 1
    err = capsys.readouterr().err
    assert f"{wd / 'ckpt.pt'}: unreadable checkpoint" in err
    assert f"move it aside (mv {wd / 'ckpt.pt'} {wd / 'ckpt.pt'}.bad) to restart" in err
    assert "Traceback" not in err
    assert final(wd)["status"] == "failed" and "unreadable checkpoint" in final(wd)["error"]


def test_a_work_dir_being_trained_is_refused_with_exit_2_and_nothing_written(tmp_path, capsys):
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "loss.csv").write_text("step,loss,val_loss,lr,tokens,elapsed_s\n")
    with open(wd / ".lock", "w") as other:  # another process training it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write(f"4242 {this_host()}\n")
        other.flush()
        before = files(wd)
        assert main(args(wd, "--trainer.max_iters=5")) == 2
        assert files(wd) == before
    err = capsys.readouterr().err
    assert f"error: {wd} is being trained by another process (pid 4242)" in err


def test_the_work_dir_lock_holds_our_pid_and_is_skipped_where_unsupported(tmp_path, monkeypatch, capsys):
    held, warning = lock_work_dir(tmp_path)
    try:
        assert warning is None
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()} {this_host()}\n"
        with pytest.raises(RunDirError, match=rf"being trained by another process \(pid {os.getpid()}\)"):
            lock_work_dir(tmp_path)
    finally:
        held.release()
    lock_work_dir(tmp_path)[0].release()  # free again once released

    def no_locks(*a):
        raise OSError(37, "No locks available")  # as on some NFS mounts

    monkeypatch.setattr(fcntl, "flock", no_locks)
    held, warning = lock_work_dir(tmp_path)
    held.release()
    assert warning is not None and warning.startswith("cannot lock")  # printed as "warning: cannot lock"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_cuda_device_is_a_config_error_before_anything_is_written(tmp_path, capsys):
    wd = tmp_path / "run"
    assert main(args(wd, "--trainer.device=cuda", "--trainer.max_iters=5")) == 2
    assert "trainer.device='cuda' but CUDA is not available" in capsys.readouterr().err
    assert not wd.exists()


# ------------------------------------------------------ trust: data, checkpoints, divergence


def prose_jsonl(path, n=40, words=60):
    import random

    vocab = "the cat sat on a mat while an old dog slept near the warm fire and birds sang".split()
    rng = random.Random(0)
    lines = [json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words))}) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def interrupted_after_a_checkpoint(wd, data, monkeypatch):
    """Train on ``data`` until step 13 (checkpoint at 10), then crash: a run to resume."""
    from reatt.training.run import TrainingRun

    conf = args(wd, f"--data.file_path={data}", "--trainer.max_iters=20", "--trainer.ckpt_interval=10")
    original = TrainingRun.on_batch_end

    def crash_at_13(self, trainer):
        original(self, trainer)
        if trainer.iter_num == 13:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingRun, "on_batch_end", crash_at_13)
    with pytest.raises(KeyboardInterrupt):
        main(conf)
    monkeypatch.setattr(TrainingRun, "on_batch_end", original)
    return conf


def test_a_resume_on_changed_data_is_refused_and_keeps_the_record(tmp_path, monkeypatch, capsys):
    data, wd = prose_jsonl(tmp_path / "data.jsonl"), tmp_path / "run"
    conf = interrupted_after_a_checkpoint(wd, data, monkeypatch)
    record, ckpt = (wd / "config.json").read_bytes(), (wd / "ckpt.pt").read_bytes()
    losses = (wd / "loss.csv").read_bytes()
    original = data.read_bytes()
    with open(data, "a") as f:  # edited while the run waited to resume
        f.write(json.dumps({"text": "a new document the first steps never saw " * 5}) + "\n")
    capsys.readouterr()
    assert main(conf) == 1
    err = capsys.readouterr().err
    assert f"cannot resume {wd}: its data changed since it started (content_sha256: " in err
    assert "move" in err and "start over" in err and "Traceback" not in err
    assert (wd / "config.json").read_bytes() == record  # the record of the original data is kept
    assert (wd / "ckpt.pt").read_bytes() == ckpt and (wd / "loss.csv").read_bytes() == losses
    assert final(wd)["status"] == "failed" and "its data changed" in final(wd)["error"]
    data.write_bytes(original)  # the data it started with: the resume goes on, and ends
    assert main(conf) == 0
    config = json.loads((wd / "config.json").read_text())
    assert config["meta"]["data"] == json.loads(record)["meta"]["data"]  # still the first record
    assert [r["from_step"] for r in config["meta"]["resumes"]] == [10]
    assert final(wd)["status"] == "completed"


def test_a_crafted_checkpoint_runs_no_code(crashed_at_the_end, tmp_path, capsys):
    """torch.load(weights_only=False) would run a pickle's code; reatt's refuses it."""
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (crashed_at_the_end / "ckpt.pt").write_bytes(pickle.dumps({"trainer": Payload(), "elapsed_s": 0.0}))
    assert main(args(crashed_at_the_end, "--trainer.max_iters=7")) == 1
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "unreadable checkpoint" in err and "Traceback" not in err


def test_a_diverging_run_stops_with_its_own_status_and_valid_json(tmp_path, capsys):
    wd = tmp_path / "run"
    code = main(
        args(wd, "--trainer.max_iters=30", "--trainer.learning_rate=1e6", "--trainer.grad_norm_clip=0")
    )
    assert code == 3  # rundir.EXIT_DIVERGED
    text = (wd / "final.json").read_text()

    def no_constants(name):
        raise AssertionError(f"final.json holds {name}: not valid JSON")

    record = json.loads(text, parse_constant=no_constants)  # NaN or Infinity would fail here
    assert record["status"] == "diverged" and record["final_nll"] is None
    assert record["diverged_at"] >= 1 and record["steps"] < 30
    assert f"diverged at step {record['diverged_at']}" in record["error"] and "nan" in record["error"]
    assert "diverged at step" in capsys.readouterr().out


def test_a_diverged_model_is_never_sampled_or_checkpointed(tmp_path):
    """Regression: with every interval 1 the NaN model was sampled and checkpointed at the step
    it diverged, and a resume went on from it."""
    wd = tmp_path / "run"
    every_step = [f"--trainer.{k}_interval=1" for k in ("eval", "log", "sample", "ckpt")]
    conf = ["--trainer.max_iters=30", "--trainer.learning_rate=1e6", "--trainer.grad_norm_clip=0"]
    assert main(args(wd, *conf, *every_step)) == 3
    at = final(wd)["diverged_at"]
    assert final(wd)["status"] == "diverged" and at < 30
    samples = (wd / "samples.txt").read_text() if (wd / "samples.txt").exists() else ""
    assert f"--- step {at} ---" not in samples
    if (wd / "ckpt.pt").exists():  # one from before the divergence, never at it
        from reatt.training.checkpoint import load_checkpoint

        assert load_checkpoint(wd / "ckpt.pt", "cpu")["trainer"]["iter_num"] < at
    assert int(rows(wd)[-1]["step"]) <= at


def test_a_training_loss_divergence_keeps_the_finite_losses_before_it(tmp_path):
    """The steps since the last loss.csv row that were finite get their row, not lost."""
    wd = tmp_path / "run"
    conf = ["--trainer.max_iters=30", "--trainer.learning_rate=1e6", "--trainer.grad_norm_clip=0"]
    assert main(args(wd, *conf, "--trainer.eval_interval=100", "--trainer.log_interval=5")) == 3
    record = final(wd)
    assert "the training loss is" in record["error"]
    last = rows(wd)[-1]
    assert int(last["step"]) == record["diverged_at"] - 1 and float(last["loss"]) < 20
    assert record["steps"] == record["diverged_at"] - 1


def test_a_work_dir_that_cannot_be_made_is_exit_2_without_a_traceback(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert main(args(tmp_path / "file" / "run", "--trainer.max_iters=5")) == 2
    err = capsys.readouterr().err
    assert "cannot create system.work_dir" in err and "Traceback" not in err


def test_stale_temp_files_of_a_killed_writer_are_removed(crashed_at_the_end):
    stale = crashed_at_the_end / ".ckpt.pt.tmp-999999-deadbeef"
    stale.write_bytes(b"\0" * 1024)  # what a kill during torch.save leaves
    assert main(args(crashed_at_the_end, "--trainer.max_iters=7")) == 0
    assert not stale.exists()


def test_a_non_utf8_byte_in_a_loss_row_is_dropped_on_resume(crashed_at_the_end, capsys):
    wd = crashed_at_the_end
    lines = (wd / "loss.csv").read_bytes().split(b"\n")
    lines.insert(2, b"3,\xff\xfe,,5e-4,12,0.1")
    (wd / "loss.csv").write_bytes(b"\n".join(lines))
    assert main(args(wd, "--trainer.max_iters=7")) == 0
    assert "dropped a malformed row on resume" in capsys.readouterr().out


def test_cpu_runs_record_their_thread_count(finished_run):
    """CPU runs are bit-identical for one thread count (tests above); config.json says which."""
    import torch

    meta = json.loads((finished_run[0] / "config.json").read_text())["meta"]
    assert meta["threads"] == torch.get_num_threads()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root"
)
def test_a_full_disk_is_said_plainly_and_keeps_what_was_written(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("this machine cannot mount a tmpfs")
    try:
        wd = disk / "run"  # room for config.json and loss.csv, not for a checkpoint (~30 MB)
        assert main(args(wd, "--trainer.max_iters=5")) == 1
        err = capsys.readouterr().err
        assert "No space left on device" in err and "Traceback" not in err
        assert len(rows(wd)) >= 2  # what was written is kept
        assert not list(wd.glob(".*.tmp-*"))  # the half-written checkpoint is gone
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_system_num_threads_is_given_back_to_the_caller(tmp_path):
    """An in-process run (a test, a notebook) sets torch's thread count for itself only: a caller's
    next run at its own count must not inherit it (float sums differ between thread counts)."""
    import torch

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    assert main(args(tmp_path / "run", "--trainer.max_iters=1", f"--system.num_threads={other}")) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["meta"]["threads"] == other
    assert torch.get_num_threads() == before


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler (g++)")
def test_compiled_training_equals_eager_and_checkpoints_the_plain_module(tmp_path):
    """``trainer.compile`` (torch.compile of the model, the chunked loss inside it: the CPU speed
    lever of docs/benchmarks.md) trains the same run as eager within fp32 rounding (Inductor
    fuses the elementwise work and sums in another order), and its checkpoint holds the plain
    module's state: the keys and shapes of an eager run's (no ``_orig_mod.`` prefix)."""
    import torch

    steps = ("--trainer.max_iters=12", "--trainer.ckpt_interval=6")
    steps += ("--model.embd_pdrop=0.0", "--model.resid_pdrop=0.0")  # compiled dropout draws other masks
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main(args(eager, *steps)) == 0
    assert main(args(compiled, *steps, "--trainer.compile=True")) == 0
    assert_same_run(rows(compiled), rows(eager), rel=1e-4)
    assert final(compiled)["final_nll"] == pytest.approx(final(eager)["final_nll"], rel=1e-4)
    states = [torch.load(d / "ckpt.pt", weights_only=False)["trainer"]["model"] for d in (eager, compiled)]
    shapes = [{k: tuple(v.shape) for k, v in state.items()} for state in states]
    assert shapes[0] == shapes[1]
