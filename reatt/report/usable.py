"""Which of a study's runs enter the report's table (``usable``), and why a study has none to
report, with what to do (``no_runs_error``)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from reatt import states
from reatt.errors import StudyError
from reatt.states import one_line


def usable(run: Any) -> tuple[bool, str]:
    """Whether a run's result enters the table; else why not."""
    if run.state != states.COMPLETED:
        return False, run.state_reason or run.collect_error or ""
    if run.final_nll is None:
        return False, "completed but no final NLL in the database: run `reatt collect`"
    if not math.isfinite(run.final_nll):
        return False, f"final NLL is {run.final_nll} (diverged?)"
    return True, ""


def _state_counts(runs: Sequence[Any]) -> str:
    """ "3 completed, 1 failed": the runs' states, most common first."""
    return ", ".join(f"{n} {state}" for state, n in Counter(r.state for r in runs).most_common())


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def no_runs_error(name: str, runs: Sequence[Any]) -> StudyError:
    """Why a study has nothing to report, and what to do. The states are those the database
    holds (``reatt status`` and ``reatt collect`` set them); the results come from collect."""
    if not runs:
        return StudyError(f"study {name!r} has no runs; run `reatt plan SPEC` first")
    completed = [r for r in runs if r.state == states.COMPLETED]
    others = [r for r in runs if r.state != states.COMPLETED]
    rest = f" ({_state_counts(others)})" if others else ""
    if completed:
        of = f"{len(completed)} of {len(runs)} runs" if others else _runs(len(completed))
        uncollected = [r for r in completed if r.final_nll is None and r.collected_at is None]
        if len(uncollected) == len(completed):
            none = "none collected yet" if len(completed) > 1 else "not collected yet"
            return StudyError(f"study {name!r}: {of} completed but {none}{rest}: run `reatt collect` first")
        problems = []
        if uncollected:
            problems.append(f"{len(uncollected)} not collected yet")
        diverged = [r for r in completed if r.final_nll is not None]  # not finite (else usable)
        if diverged:
            values = ", ".join(sorted({str(r.final_nll) for r in diverged}))
            problems.append(f"{len(diverged)} diverged (final NLL {values})")
        unread = [r for r in completed if r.final_nll is None and r.collected_at is not None]
        if unread:
            why = next((r.collect_error for r in unread if r.collect_error), None)
            problems.append(
                f"{len(unread)} collected without a final NLL" + (f" ({one_line(why, 80)})" if why else "")
            )
        hint = "run `reatt collect` first" if uncollected else "see `reatt status` and the runs' final.json"
        return StudyError(
            f"study {name!r}: {of} completed, but none has a usable final NLL: "
            f"{'; '.join(problems)}{rest}; {hint}"
        )
    if any(r.state in states.ACTIVE_STATES for r in runs):
        hint = "wait for them to finish (`reatt status`), then run `reatt collect`"
    elif any(r.state == states.PLANNED for r in runs):
        hint = "run `reatt submit`, then `reatt collect`"
        if any(r.state in states.RESUBMITTABLE_STATES for r in runs):
            hint += " (`reatt submit --resubmit-failed` also reruns the failed ones)"
    elif any(r.state in states.RESUBMITTABLE_STATES for r in runs):
        hint = "see `reatt status` for why, then `reatt submit --resubmit-failed` and `reatt collect`"
    else:
        hint = "see `reatt status`"
    if any(r.state == states.DIVERGED for r in runs):
        hint += (
            "; a run diverged when its loss became non-finite (`reatt status` says at which step): "
            "a lower trainer.learning_rate, a warmup or gradient clipping usually helps"
        )
    return StudyError(f"study {name!r}: no run has completed yet{rest}; {hint}")
