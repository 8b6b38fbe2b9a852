"""Local processes: whether a pid is alive, whether it trains, and the ids of local jobs.

A local job's id is ``local:<host>:<pid>`` (a pid alone is ambiguous across the machines of a
shared filesystem); ``parse_local_job_id`` also reads the older ``local:<pid>``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from reatt.files import this_host
from reatt.train import TRAIN_MODULE


def local_job_id(pid: int) -> str:
    """``local:<host>:<pid>``: a local job's id."""
    return f"local:{this_host()}:{pid}"


def parse_local_job_id(job_id: str | None) -> tuple[str | None, int] | None:
    """(host, pid) of a local job id; host is None for the older ``local:<pid>`` form.
    None if ``job_id`` is not a local job id."""
    if not job_id or not job_id.startswith("local:"):
        return None
    host, _, pid = job_id[len("local:") :].rpartition(":")
    if not pid.isdigit():
        return None
    return host or None, int(pid)


def live_process(pid: int) -> list[str] | None:
    """The arguments of the live (not zombie) process ``pid``; None if there is none."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
            return None
        return [a.decode(errors="replace") for a in cmdline]
    try:  # no /proc (macOS): ask ps
        r = subprocess.run(
            ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = r.stdout.strip()
    if r.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split()[1:]


def pid_is_training(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) ``python -m reatt.train`` process."""
    return is_training(live_process(pid))


def is_training(args: list[str] | None) -> bool:
    """True if a live process's arguments (``live_process``) are ``python -m reatt.train``'s."""
    script = TRAIN_MODULE.replace(".", "/") + ".py"
    return args is not None and (TRAIN_MODULE in args or any(a.endswith(script) for a in args))


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask: what Slurm or taskset gives us)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
