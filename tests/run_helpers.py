"""Comparing two training runs' records."""

from __future__ import annotations

import pytest


def assert_same_run(a: list[dict[str, str]], b: list[dict[str, str]], rel: float = 1e-5) -> None:
    """loss.csv rows of two runs that should compute the same losses, only rounded otherwise:
    steps, lr and tokens equal; losses within ``rel``. The default is for one command run in
    different processes: not bitwise, as about one fresh process in ten computes another fp32
    NLL from step 0 on (10.837130 vs 10.837122; docs/guarantees.md). Two runs in one process
    are compared bitwise instead."""
    assert [(r["step"], r["lr"], r["tokens"]) for r in a] == [(r["step"], r["lr"], r["tokens"]) for r in b]
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "val_loss"):
            assert (x[k] == "") == (y[k] == ""), (x, y)
            assert x[k] == "" or float(x[k]) == pytest.approx(float(y[k]), rel=rel), (x, y)
