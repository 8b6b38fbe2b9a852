"""``reatt plan SPEC``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from reatt.cli.app import DbOpt, app, console, engine_for, say, user_errors


@app.command()
def plan(
    spec: Annotated[Path, typer.Argument(help="Ablation spec (TOML), e.g. ablations/demo.toml")],
    *,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job specs as JSON (for scripts)")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the plan of a study whose spec changed")
    ] = False,
    new_version: Annotated[
        bool, typer.Option("--new-version", help="Plan a changed spec as a new study <name>-vN")
    ] = False,
    target_delta: Annotated[
        float | None,
        typer.Option(
            "--target-delta",
            min=0.0,
            help="Also say how many seeds would resolve a Δ this size (nats), from --noise-std",
        ),
    ] = None,
    noise_std: Annotated[
        float | None,
        typer.Option(
            "--noise-std",
            min=0.0,
            help="Run-to-run std of a variant's final NLL (nats), e.g. from `reatt report` of a pilot",
        ),
    ] = None,
    db: DbOpt = None,
) -> None:
    """Expand an ablation spec into jobs and record the study in the database.

    Planning the same spec twice changes nothing. A spec with [tune] plans two stages: every
    variant at every candidate on the tuning seeds, then the evaluation seeds at each variant's
    chosen value.

    Example: reatt plan ablations/demo.toml
    """
    from reatt.study.plan import plan_study
    from reatt.study.spec import PLAN_KEYS, load_spec
    from reatt.study.tune import EVAL, PRUNE_KEYS, TUNE, candidate_text

    if (target_delta is None) != (noise_std is None):
        raise typer.BadParameter("give both, or neither", param_hint="--target-delta, --noise-std")
    with user_errors():
        parsed = load_spec(spec)
        result = plan_study(parsed, engine_for(db, create=True), force=force, new_version=new_version)
    if as_json:
        print(json.dumps([j.to_json() for j in result.jobs], indent=2))
        return
    from rich.table import Table

    table = Table(
        title=f"study {result.study}: {len(result.jobs)} jobs ({result.action})", title_justify="left"
    )
    tuned = parsed.tune is not None
    table.add_column("#", justify="right")
    if tuned:
        table.add_column("stage")
    table.add_column("run", no_wrap=True)
    table.add_column("seed", justify="right")
    table.add_column("overrides beyond the base", overflow="fold")
    for j in result.jobs:
        extra = [
            f"{k}={v!r}"
            for k, v in j.overrides.items()
            if k not in PLAN_KEYS + PRUNE_KEYS and (k not in parsed.base or parsed.base[k] != v)
        ]
        if j.stage == EVAL:
            extra.append("+ its variant's chosen value")
        stage = ["1 tune" if j.stage == TUNE else "2 eval"] if tuned else []
        table.add_row(str(j.position), *stage, j.name, str(j.seed), "\n".join(extra) or "—")
    console.print(table)
    if parsed.tune is not None:
        t = parsed.tune
        n_tune = sum(j.stage == TUNE for j in result.jobs)
        variants = len(parsed.variants())
        say(
            f"stage 1: {n_tune} tuning runs ({variants} variants × {len(t.candidates())} candidates × "
            f"{len(t.seeds)} tuning seed(s) {', '.join(map(str, t.seeds))}); shared value "
            f"{candidate_text(t.shared)}"
            + (
                f"; a tuning run stops (pruned) once its held-out NLL is more than {t.prune_margin} "
                f"above a sibling candidate's at the same step, from {t.prune_after:.0%} of its steps"
                if t.prune_margin > 0
                else "; no pruning"
            )
        )
        say(
            f"stage 2: {len(result.jobs) - n_tune} evaluation runs (seeds "
            f"{', '.join(map(str, parsed.seeds))}), each at its variant's value with the lowest mean "
            "tuning NLL; `reatt submit` runs stage 2 once stage 1 has ended (with --cluster: submit "
            "again after stage 1's jobs end)"
        )
    if target_delta is not None and noise_std is not None:
        from reatt.report.fair import ALPHA, POWER, seeds_for

        m = max(len(parsed.variants()) - 1, 1)
        # no pairing credited: a difference of two runs varies by sqrt(2) times one run's std
        need = seeds_for(target_delta, noise_std * 2**0.5, m)
        say(
            f"to resolve Δ = {target_delta} nats with {POWER:.0%} power over {m} comparison(s) (Holm, "
            f"α = {ALPHA} family-wise), given a run-to-run std of {noise_std}: "
            + (
                f"about {need} seeds (this spec has {len(parsed.seeds)})"
                if need
                else "no feasible number of seeds"
            )
            + "; pairing by seed usually needs fewer"
        )
    if result.jobs:
        say(f"work dirs: {Path(result.jobs[0].work_dir).parent}/<run>")
    for old, new in result.moved:
        say(f"moved the changed run's directory aside: {old} -> {new}")
    for name in result.dropped:
        say(f"dropped run {name} (no longer in the spec; its files are kept)")
    say("next: reatt submit            (this machine)\n      reatt submit --cluster  (Slurm)")
