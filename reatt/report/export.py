"""``reatt export``: a study's runs and metrics as two tables (CSV or Parquet), for a notebook.

``runs``: one row per run (every run, whatever its state), with its study, variant, seed,
features, state, results, the reatt version and git commit it ran at, and its overrides and
config.json as JSON text. ``metrics``: one row per loss.csv row of every run. Both come from the
database alone (no run directory is read); ``runs.run`` and ``metrics.run`` join them.

    runs = pd.read_parquet("runs.parquet"); metrics = pd.read_parquet("metrics.parquet")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reatt.errors import ReattError
from reatt.report import ExportFormat

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from sqlalchemy import Engine


# column -> pandas dtype: nullable ints and strings, so that a missing value stays missing and an
# integer column stays integer, in CSV (read back with dtype=RUN_TYPES) and Parquet alike
RUN_TYPES: dict[str, str] = {
    "study": "string",
    "run": "string",
    "variant": "string",
    "seed": "Int64",
    "stage": "string",
    "features": "string",  # "swiglu+rope"; "" for none
    "state": "string",
    "state_reason": "string",
    "final_nll": "float64",
    "final_train_loss": "float64",
    "steps": "Int64",
    "tokens": "Int64",
    "tokens_per_s": "float64",
    "wall_time_s": "float64",
    "mfu": "float64",
    "n_params": "Int64",
    "n_params_non_embedding": "Int64",
    "reatt_version": "string",
    "git_commit": "string",
    "executor": "string",
    "job_id": "string",
    "submitted_at": "datetime64[ns]",
    "collected_at": "datetime64[ns]",
    "overrides": "string",  # JSON
    "config": "string",  # JSON: the run's config.json
}
METRIC_TYPES: dict[str, str] = {
    "study": "string",
    "run": "string",
    "step": "int64",
    "tokens": "Int64",
    "loss": "float64",
    "val_loss": "float64",
    "lr": "float64",
    "elapsed_s": "float64",
}
RESULTS = (
    "final_nll",
    "final_train_loss",
    "steps",
    "tokens",
    "tokens_per_s",
    "wall_time_s",
    "mfu",
    "n_params",
    "n_params_non_embedding",
)
DATES = [c for c, t in RUN_TYPES.items() if t.startswith("datetime")]


def _meta(run: Any, key: str) -> str | None:
    meta = (run.config or {}).get("meta") if isinstance(run.config, dict) else None
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def frames(engine: Engine, studies: Sequence[str | None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, metrics) of the given studies (None: the latest planned), typed as RUN_TYPES and
    METRIC_TYPES."""
    import pandas as pd

    from reatt.report.build import metrics_frame
    from reatt.study import store

    rows: list[dict[str, Any]] = []
    ids: dict[int, tuple[str, str]] = {}
    with store.transaction(engine) as session:
        for name in studies:
            st = store.get_study(session, name)
            for r in st.runs:
                ids[r.id] = (st.name, r.name)
                rows.append(
                    {
                        "study": st.name,
                        "run": r.name,
                        "variant": r.variant,
                        "seed": r.seed,
                        "stage": r.stage,
                        "features": "+".join(r.features or []),
                        "state": r.state,
                        "state_reason": r.state_reason,
                        **{c: getattr(r, c) for c in RESULTS},
                        "reatt_version": _meta(r, "reatt_version"),
                        "git_commit": _meta(r, "git_commit"),
                        "executor": r.executor,
                        "job_id": r.job_id,
                        "submitted_at": r.submitted_at,
                        "collected_at": r.collected_at,
                        "overrides": json.dumps(r.overrides, sort_keys=True),
                        "config": None if r.config is None else json.dumps(r.config, sort_keys=True),
                    }
                )
        metrics = metrics_frame(session, ids)
    runs = pd.DataFrame(rows, columns=list(RUN_TYPES)).astype(RUN_TYPES)
    keys = metrics.pop("run_id").map(ids)
    metrics.insert(0, "run", [k[1] for k in keys])
    metrics.insert(0, "study", [k[0] for k in keys])
    return runs, metrics[list(METRIC_TYPES)].astype(METRIC_TYPES)


def read_back(path: Path) -> pd.DataFrame:
    """An exported table, read with its types (CSV has none of its own)."""
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    types = RUN_TYPES if path.stem == "runs" else METRIC_TYPES
    plain = {c: t for c, t in types.items() if not t.startswith("datetime")}
    dates = [c for c in DATES if c in types]
    frame = pd.read_csv(path, dtype=plain, parse_dates=dates, keep_default_na=False, na_values=[""])
    if "features" in frame:  # "" (no feature) and a missing value are one empty field in CSV
        frame["features"] = frame["features"].fillna("")
    return frame.astype({c: types[c] for c in dates})


def export(
    engine: Engine, studies: Sequence[str | None], out_dir: Path, fmt: ExportFormat = ExportFormat.csv
) -> list[Path]:
    """Write runs.<fmt> and metrics.<fmt> into ``out_dir``; return their paths."""
    runs, metrics = frames(engine, studies or [None])
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReattError(f"{out_dir} is not a directory: give --out a directory for the exported files")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("runs", runs), ("metrics", metrics)):
        path = out_dir / f"{name}.{fmt.value}"
        tmp = path.with_name(f".{path.name}.tmp")  # a full disk leaves the old file
        if fmt is ExportFormat.parquet:
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        tmp.replace(path)
        written.append(path)
    return written
