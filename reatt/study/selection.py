"""Stage 2 of a tuned study: each variant's value chosen from its tuning runs, and recorded on
its evaluation runs (``record_choices``), which only then can run.

The rule: a variant's tuning is over when every one of its tuning runs has a result (completed
and collected, pruned, or diverged); a candidate's score is its mean final held-out NLL over the
tuning seeds, and one pruned or diverged seed loses it the contest; the lowest score wins (a
tie: the first in plan order, where the shared value comes first, then the spec's order). A
choice, once recorded, is never changed by a later collect or submit: ``reatt plan --force``
with a changed ``[tune]`` starts the evaluation runs over, and ``reatt submit --force`` the
whole study.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from reatt import states
from reatt.study import store
from reatt.study.tune import EVAL, TUNE, candidate_label, candidate_text


@dataclass
class Choice:
    """A variant's tuning: chosen (``chosen`` set, ``why`` says why) or waiting (``why`` says for what)."""

    variant: str
    chosen: dict[str, Any] | None
    why: str
    scores: dict[str, float | None] = field(default_factory=dict)  # label -> mean NLL (None: lost)
    edge: list[str] = field(default_factory=list)  # tuned keys whose chosen value ends the grid


def _result(run: store.Run) -> tuple[str, float | str | None]:
    """("ok", NLL), ("lost", why) or ("wait", why) for one tuning run."""
    if run.state == states.COMPLETED:
        if run.final_nll is None:
            return "wait", f"{run.name} is completed but not collected"
        if not math.isfinite(run.final_nll):
            return "lost", f"{run.name} diverged (final NLL {run.final_nll})"
        return "ok", run.final_nll
    if run.state in (states.PRUNED, states.DIVERGED):
        return "lost", f"{run.name} {run.state}" + (f" ({run.state_reason})" if run.state_reason else "")
    return "wait", f"{run.name} is {run.state}" + (
        f": {states.one_line(run.state_reason, 120)}" if run.state_reason else ""
    )


def choose(runs: list[store.Run]) -> Choice:
    """The choice of one variant from its tuning runs (plan order)."""
    variant = runs[0].variant
    waiting = [why for kind, why in map(_result, runs) if kind == "wait"]
    if waiting:
        return Choice(variant, None, f"waits for its tuning: {'; '.join(map(str, waiting))}")
    by_candidate: dict[str, tuple[dict[str, Any], list[store.Run]]] = {}
    for run in runs:
        candidate = (run.tuning or {})["candidate"]
        by_candidate.setdefault(json.dumps(candidate, sort_keys=True), (candidate, []))[1].append(run)
    scores: dict[str, float | None] = {}
    texts, best, best_score = [], None, math.inf
    for candidate, group in by_candidate.values():
        label = candidate_label(candidate)
        lost = [str(why) for kind, why in map(_result, group) if kind == "lost"]
        if lost:
            scores[label] = None
            texts.append(f"{label}: lost ({'; '.join(lost)})")
            continue
        score = math.fsum(float(r.final_nll) for r in group) / len(group)  # type: ignore[arg-type]
        scores[label] = score
        texts.append(f"{label}: {score:.4f}")
        if score < best_score:
            best, best_score = candidate, score
    if best is None:
        return Choice(variant, None, f"no candidate finished its tuning ({'; '.join(texts)})", scores)
    seeds = sorted({r.seed for r in runs})
    edge = []
    candidates = [c for c, _ in by_candidate.values()]
    for key, value in best.items():
        values = sorted({c[key] for c in candidates if isinstance(c[key], int | float)})
        if len(values) > 1 and value in (values[0], values[-1]):
            edge.append(key)
    why = (
        f"{candidate_text(best)}: the lowest mean final held-out NLL over tuning seed(s) "
        f"{', '.join(map(str, seeds))} ({'; '.join(texts)})"
    )
    if edge:
        why += f"; at the edge of the grid for {', '.join(edge)}: a better value may lie beyond it"
    return Choice(variant, best, why, scores, edge)


def record_choices(engine: Engine, study: str) -> dict[str, str]:
    """Choose for every variant whose tuning is over and record the choice on its evaluation runs
    that have none; returns {evaluation run: why it still waits} ({} in an untuned study)."""
    waiting: dict[str, str] = {}
    with store.transaction(engine) as session:
        st = store.get_study(session, study)
        tuning: dict[str, list[store.Run]] = {}
        for run in st.runs:
            if run.stage == TUNE:
                tuning.setdefault(run.variant, []).append(run)
        for run in st.runs:
            if run.stage != EVAL or (run.tuning or {}).get("chosen"):
                continue
            if run.variant not in tuning:
                waiting[run.name] = f"no tuning run of variant {run.variant!r} is planned"
                continue
            choice = choose(tuning[run.variant])
            if choice.chosen is None:
                waiting[run.name] = choice.why
                continue
            run.tuning = {
                "chosen": choice.chosen,
                "why": choice.why,
                "scores": choice.scores,
                "edge": choice.edge,
            }
    return waiting


def needs_collect(runs: list[store.Run]) -> bool:
    """Whether a tuning run has completed but its result is not collected yet."""
    return any(r.stage == TUNE and r.state == states.COMPLETED and r.final_nll is None for r in runs)
