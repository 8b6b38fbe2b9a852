"""What pairs by seed and what tuning needs, in the training program and end to end: each
parameter's init from (seed, name), the fingerprints in config.json, pruning a hopeless tuning
run, and a tuned study through `reatt submit` (both stages), collect and report."""

from __future__ import annotations

import datetime as dt
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import torch

from reatt import rundir, states
from reatt.executors.local import LocalExecutor
from reatt.report.build import COL_VARIANT, build_report
from reatt.report.fair import COL_CHOSEN, COL_VERDICT
from reatt.rundir import EXIT_PRUNED, FinalRecord
from reatt.states import Collected, DirMissing, Elsewhere, Ended, Exited, Files, Gone, RunState
from reatt.study import store as db
from reatt.study.plan import plan_study
from reatt.study.spec import load_spec
from reatt.study.submit import submit
from reatt.train import main
from reatt.training.config import get_default_config
from reatt.training.model import GPT
from reatt.transitions import final_state, next_state

TINY = [
    "--data.block_size=32",
    "--trainer.batch_size=4",
    "--trainer.eval_interval=5",
    "--trainer.eval_windows=8",
    "--trainer.log_interval=5",
    "--trainer.ckpt_interval=0",
    "--trainer.max_iters=20",
]


def model(seed: int, **on: Any) -> GPT:
    cfg = get_default_config().model
    cfg.model_type = "gpt-nano"
    for k, v in on.items():
        setattr(cfg, k, v)
    return GPT(cfg, vocab_size=300, block_size=32, seed=seed)


def test_variants_of_a_seed_share_their_init_wherever_the_architecture_agrees() -> None:
    before = torch.get_rng_state()
    base = dict(model(1).named_parameters())
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG (dropout's) is untouched
    for on in ({"rope": True}, {"swiglu": True}, {"rmsnorm": True}):
        other = dict(model(1, **on).named_parameters())
        same = [n for n in base if n in other and base[n].shape == other[n].shape]
        assert len(same) >= 10
        for name in same:
            assert torch.equal(base[name], other[name]), (on, name)
    rope = model(1, rope=True)
    assert "wpe.weight" in base and "wpe.weight" not in dict(rope.named_parameters())
    seed2 = dict(model(2).named_parameters())
    assert not torch.equal(base["h.0.attn.c_attn.weight"], seed2["h.0.attn.c_attn.weight"])
    assert torch.equal(base["ln_f.weight"], seed2["ln_f.weight"])  # ones, whatever the seed
    # the recorded fingerprints say the same, parameter by parameter
    for on in ({"rope": True}, {"swiglu": True}, {"rmsnorm": True}):
        a, b = model(1).init_fingerprint, model(1, **on).init_fingerprint
        for name in set(a) & set(b):
            assert (a[name] == b[name]) == (a[name].split(":")[0] == b[name].split(":")[0]), (on, name)
    fp1, fp_rope, fp2 = model(1).init_fingerprint, rope.init_fingerprint, model(2).init_fingerprint
    assert fp1["h.0.mlp.c_fc.weight"] == fp_rope["h.0.mlp.c_fc.weight"]
    assert fp1["h.0.mlp.c_fc.weight"] != fp2["h.0.mlp.c_fc.weight"]
    assert fp1["wte.weight"].startswith("300x48:")
    # GPT-2's scales
    std = base["h.0.attn.c_proj.weight"].std().item()
    assert abs(std - 0.02 / (2 * 3) ** 0.5) < 0.002
    assert abs(base["wte.weight"].std().item() - 0.02) < 0.002


def _meta(work_dir: Path) -> dict[str, Any]:
    return json.loads((work_dir / "config.json").read_text())["meta"]


def test_config_json_records_the_data_order_and_init_for_the_pair_check(tmp_path: Path) -> None:
    for name, extra in (("a", []), ("b", ["--model.swiglu=True"]), ("c", ["--system.seed=9"])):
        assert main([*TINY, "--trainer.max_iters=5", f"--system.work_dir={tmp_path / name}", *extra]) == 0
    a, b, c = (_meta(tmp_path / n) for n in "abc")
    assert a["data"]["train"]["order"] == b["data"]["train"]["order"] != c["data"]["train"]["order"]
    assert a["model"]["init"]["h.0.attn.c_attn.weight"] == b["model"]["init"]["h.0.attn.c_attn.weight"]
    assert a["model"]["init"]["h.0.attn.c_attn.weight"] != c["model"]["init"]["h.0.attn.c_attn.weight"]


def test_a_run_far_behind_a_sibling_at_the_same_step_is_pruned(tmp_path: Path) -> None:
    good, bad, lucky = tmp_path / "good", tmp_path / "bad", tmp_path / "lucky"
    assert main([*TINY, f"--system.work_dir={good}", "--trainer.learning_rate=3e-3"]) == 0
    prune = [
        "--trainer.prune_margin=0.05",
        "--trainer.prune_after=10",
        f"--trainer.prune_siblings={tmp_path / 'missing'}{os.pathsep}{good}",
    ]
    # a learning rate far too low: behind at step 10
    assert main([*TINY, f"--system.work_dir={bad}", "--trainer.learning_rate=1e-6", *prune]) == EXIT_PRUNED
    record = json.loads((bad / rundir.FINAL).read_text())
    assert record["status"] == "pruned" and record["pruned_at"] == 10
    assert "pruned at step 10" in record["error"] and "sibling good" in record["error"]
    assert record["final_nll"] > 0
    steps = [r.step for r in rundir.read_loss_csv(bad / rundir.LOSS).rows]
    assert steps[-1] == 10 and 0 in steps  # its rows up to the step it stopped
    state = final_state(rundir.read_final(bad))
    assert state == RunState(states.PRUNED, record["error"])
    # level with its sibling, or ahead of a worse one: it goes on to the end
    assert main([*TINY, f"--system.work_dir={lucky}", "--trainer.learning_rate=3e-3", *prune]) == 0
    assert json.loads((lucky / rundir.FINAL).read_text())["status"] == "completed"
    ahead = tmp_path / "ahead"
    worse = [*prune[:2], f"--trainer.prune_siblings={bad}"]  # bad logged step 10, far above
    assert main([*TINY, f"--system.work_dir={ahead}", "--trainer.learning_rate=3e-3", *worse]) == 0
    assert json.loads((ahead / rundir.FINAL).read_text())["status"] == "completed"


def test_a_relative_sibling_directory_is_a_config_error(tmp_path: Path, capsys: Any) -> None:
    wd = tmp_path / "run"
    code = main(
        [*TINY, f"--system.work_dir={wd}", "--trainer.prune_margin=0.1", "--trainer.prune_siblings=rel/a"]
    )
    assert code == rundir.EXIT_USAGE and not wd.exists()
    assert "trainer.prune_siblings: 'rel/a' is not an absolute run directory" in capsys.readouterr().err


def pruned_files(tmp_path: Path, since: dt.datetime | None = None) -> Files:
    error = "pruned at step 10: held-out NLL 9.1 is more than 0.05 above 7.2 of sibling good at that step"
    FinalRecord(rundir.FINAL_PRUNED, final_nll=9.1, steps=10, error=error, pruned_at=10).write(tmp_path)
    return Files(exists=True, final=rundir.read_final(tmp_path), checkpoint=False, since=since)


def test_a_pruned_final_json_is_state_pruned_however_its_end_is_seen(tmp_path: Path) -> None:
    files = pruned_files(tmp_path)
    reason = files.final.record.error if files.final and files.final.record else None
    pruned = RunState(states.PRUNED, reason)
    running = RunState(states.RUNNING)
    # Slurm: the job exited 4, sacct says FAILED; the run's own word says pruned
    assert next_state(running, Ended(states.FAILED, "exit code 4", files)) == pruned
    # local: the process exited 4
    exited = Exited(rundir.EXIT_PRUNED, files.final, stale=False, signalled=False)
    assert next_state(running, exited) == pruned
    # collect, and the files alone (another host's run, a scheduler gone)
    assert next_state(running, Collected(live=True, problems=[], files=files)) == pruned
    assert next_state(running, Gone(files)) == pruned
    assert next_state(running, Elsewhere("runs on another host", files)) == pruned
    # a final result: not active, not resubmitted, its directory expected to stay
    assert states.PRUNED not in states.ACTIVE_STATES | states.RESUBMITTABLE_STATES
    assert next_state(pruned, DirMissing("no run directory", live=True, collected_before=False)).state == (
        states.BROKEN
    )


SPEC = """
[study]
name = "tiny-tuned"
seeds = [1, 2]
out_dir = "{out}"

[base]
model.model_type = "gpt-nano"
data.block_size = 32
trainer.batch_size = 4
trainer.max_iters = 20
trainer.learning_rate = 3e-3
trainer.eval_interval = 5
trainer.eval_windows = 8
trainer.log_interval = 5
trainer.ckpt_interval = 0

[features]
rope = {{ "model.rope" = true }}

[tune]
seeds = [7]
"trainer.learning_rate" = [1e-6, 3e-3]
prune_margin = 0.05
prune_after = 0.5
"""


def test_a_tuned_study_runs_both_stages_in_one_local_submit_and_reports_both(tmp_path: Path) -> None:
    spec = tmp_path / "tuned.toml"
    spec.write_text(textwrap.dedent(SPEC.format(out=tmp_path / "out")))
    engine = db.open_db(tmp_path / "results.db")
    plan_study(load_spec(spec), engine)
    result = submit(engine, None, LocalExecutor(jobs=1, show_progress=False))
    # stage 1: the too-low candidate is pruned behind the good one (which ran first... or after:
    # either way one of the two is pruned or loses); stage 2: both variants at 3e-3
    assert not result.failed and not result.diverged
    assert sorted(result.completed + [n for n, _ in result.pruned]) == sorted(
        [
            "tune-baseline-lr1e-06-s7",
            "tune-baseline-lr0.003-s7",
            "tune-rope-lr1e-06-s7",
            "tune-rope-lr0.003-s7",
            "baseline-s1",
            "baseline-s2",
            "rope-s1",
            "rope-s2",
        ]
    )
    assert {n for n, _ in result.pruned} == {"tune-baseline-lr1e-06-s7", "tune-rope-lr1e-06-s7"}
    for name in ("baseline-s1", "rope-s2"):
        cfg = json.loads((tmp_path / "out" / "tiny-tuned" / name / "config.json").read_text())
        assert cfg["trainer"]["learning_rate"] == 3e-3
    with db.transaction(engine) as session:
        runs = {r.name: r for r in db.get_study(session, "tiny-tuned").runs}
        assert runs["tune-rope-lr1e-06-s7"].state == states.PRUNED
        assert runs["rope-s1"].tuning["chosen"] == {"trainer.learning_rate": 3e-3}
        assert "lr1e-06: lost" in runs["rope-s1"].tuning["why"]
    from reatt.study.collect import collect

    collect(engine, "tiny-tuned")
    report = build_report(engine, "tiny-tuned")
    t = report.table.set_index(COL_VARIANT)
    assert report.tuned and t.loc["rope", COL_CHOSEN] == "trainer.learning_rate=0.003"
    assert t.loc["rope", COL_VERDICT] in ("better", "worse", "not resolved")
    assert set(report.tuning["state"]) == {"completed", "pruned"}
    # a second submit has nothing left to do, in either stage
    again = submit(engine, None, LocalExecutor(jobs=1, show_progress=False))
    assert not again.completed and not again.submitted
    engine.dispose()
