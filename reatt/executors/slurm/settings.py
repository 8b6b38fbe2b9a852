"""The ``[slurm]`` table of a spec: what every sbatch script of a study asks for, and the checks
that keep a rendered script valid and safe.

``#SBATCH`` lines are read by sbatch, not by a shell: their values are validated against simple
patterns (``check_settings``) and never hold a newline; options that reatt sets itself (logs,
requeue, signal) may not be set again by an ``extra_sbatch`` line.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from reatt.errors import SpecError

MAX_SIGNAL_SECONDS = 65535  # the largest --signal=...@N Slurm takes
MIN_TRAIN_SECONDS = 60  # time limit - signal_seconds must leave at least this much
# the signals a run checkpoints on (reatt.training.run.STOP_SIGNALS), as [slurm] signal names them
SIGNALS = ("USR1", "USR2", "TERM")


@dataclass(frozen=True)
class SlurmSettings:
    """The ``[slurm]`` table: what every sbatch script of the study asks for."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "01:00:00"
    cpus_per_task: int = 2
    mem: str = "8G"
    gpus: int = 0  # one process on this many GPUs: 0 or 1 (more ranks: gpus_per_node)
    nodes: int = 1  # nodes of a job; ranks = nodes x ntasks_per_node (one rank per GPU)
    gpus_per_node: int = 0  # GPUs of each node, one rank each (0: CPU ranks)
    ntasks_per_node: int = 0  # ranks on each node (0: gpus_per_node, or 1 without GPUs)
    signal: str = ""  # sent signal_seconds before the time limit: USR1, USR2, TERM ("": time_signal)
    modules: list[str] = field(default_factory=list)  # `module load` each, in order
    venv: str = ""  # a virtualenv to activate (empty: the one reatt runs from, if any)
    hf_home: str = ""  # HF_HOME for the jobs (empty: inherit)
    extra_sbatch: list[str] = field(default_factory=list)  # more #SBATCH lines, e.g. "--constraint=a100"
    signal_seconds: int = 120  # the signal this long before the time limit: checkpoint and requeue
    array_throttle: int = 0  # at most this many array tasks at once (0: no limit)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> SlurmSettings:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise SpecError(f"{where}[slurm]: unknown key {key!r}; valid keys: {', '.join(known)}")
            default = getattr(cls(), key)
            if isinstance(default, list):
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
                expected = "a list of strings"
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
                expected = "a non-negative integer"
            else:
                ok = isinstance(value, str)
                expected = "a string"
            if not ok:
                raise SpecError(f"{where}[slurm] {key} = {value!r}: expected {expected}")
            values[key] = value
        return cls(**values)

    @property
    def tasks_per_node(self) -> int:
        """Ranks on each node: ntasks_per_node, else one per GPU, else one."""
        return self.ntasks_per_node or self.gpus_per_node or 1

    @property
    def time_signal(self) -> str:
        """The signal before the time limit: ``signal``, else USR1 to one process's batch shell
        (forwarded), USR2 to every rank (NCCL has caught USR1 in some versions)."""
        return self.signal or ("USR2" if self.world_size > 1 else "USR1")

    @property
    def world_size(self) -> int:
        """Ranks of a job: more than one trains with DDP, one srun task per rank."""
        return self.nodes * self.tasks_per_node

    def with_overrides(self, **overrides: Any) -> SlurmSettings:
        """A copy with the CLI's non-None overrides applied."""
        current = asdict(self)
        current.update({k: v for k, v in overrides.items() if v is not None})
        return SlurmSettings(**current)


def settings_of(spec: dict[str, Any], study: str, **overrides: Any) -> SlurmSettings:
    """A study's [slurm] table as recorded at plan time, with the CLI's non-None ``overrides``
    and ``~`` expanded in its paths; checked (SpecError)."""
    settings = SlurmSettings.from_table(spec.get("slurm", {}), f"study {study}: ").with_overrides(**overrides)
    if settings.venv:
        settings = settings.with_overrides(venv=os.path.expanduser(settings.venv))
    if settings.hf_home:
        settings = settings.with_overrides(hf_home=os.path.expanduser(settings.hf_home))
    check_settings(settings)
    return settings


# --- validation of what goes into #SBATCH lines -------------------------------------------------

_NAME_LIST = re.compile(r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")
_SBATCH_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "partition": (_NAME_LIST, "a partition name (or a comma-separated list)"),
    "account": (re.compile(r"^[A-Za-z0-9_.+-]+$"), "an account name (letters, digits, '_', '.', '+', '-')"),
    "qos": (_NAME_LIST, "a QOS name"),
    "time": (
        re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE)$", re.I),
        "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS",
    ),
    "mem": (re.compile(r"^\d+[KMGT]?$", re.I), "a size like 8G, 16000M or 8000 (MB)"),
}
# options reatt sets itself: an extra_sbatch line may not change them (status and requeue rely on
# them). sbatch (getopt_long) also takes any unambiguous prefix of a long option: "--job=x" sets
# the job name, "--out", "--sig", "--arr", "--no-req" work too; such prefixes are refused as well.
_RESERVED_OPTIONS = {
    "--job-name": "-J",
    "--output": "-o",
    "--error": "-e",
    "--array": "-a",
    "--open-mode": None,
    "--requeue": None,
    "--no-requeue": None,
    "--signal": None,
    # [slurm] nodes / gpus_per_node / ntasks_per_node: the ranks of a run, rendered consistently
    "--nodes": "-N",
    "--ntasks": "-n",
    "--ntasks-per-node": None,
    "--gpus-per-node": None,
    "--gpus": "-G",
    # the job's environment: --export=...,BASH_ENV=... runs code of one's choosing in the job
    "--export": None,
    "--export-file": None,
    # [slurm] time, checked against signal_seconds: a second --time line would win over it
    "--time": "-t",
}
# one word: --name[=value], -x, or -x with its value attached (-c8)
_OPTION = re.compile(r"(--[A-Za-z][A-Za-z0-9-]*|-[A-Za-z])(=\S*|(?<=^-[A-Za-z])[^=\s-]\S*)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def has_control(text: str) -> bool:
    return bool(_CONTROL.search(text))


def _reserved_by(option: str) -> list[str]:
    """The options reatt sets that sbatch would take ``option`` (``--x`` or ``-x``) for: its short
    form, or for a long option itself or any prefix of it (getopt_long's abbreviations)."""
    if option in _RESERVED_OPTIONS:
        return [option]  # getopt_long takes an exact name over the options it abbreviates
    if option.startswith("--"):
        return [long for long in _RESERVED_OPTIONS if long.startswith(option)]
    return [long for long, short in _RESERVED_OPTIONS.items() if short == option]


def _extra_problem(line: str) -> str | None:
    """Why ``line`` cannot be an ``extra_sbatch`` entry, or None. sbatch reads every option of an
    #SBATCH line (the later wins): an entry is one option (``--name=value``, ``--name value`` or
    ``-x value``), and none of the options reatt sets, in any spelling sbatch accepts."""
    one = "expected one sbatch option per entry, like '--constraint=a100' or '--exclude node07'"
    if has_control(line) or any(c in line for c in "\"'\\"):
        return f"{one}, without quotes, backslashes or control characters (newline, tab...)"
    words = line.split()
    m = _OPTION.fullmatch(words[0]) if words else None
    if m is None or len(words) > 2 or (len(words) == 2 and (m.group(2) or words[1].startswith("-"))):
        options = [w for w in words if w.startswith("-")]
        if len(options) > 1:
            return f"{len(options)} options in one entry ({', '.join(options)}): sbatch reads them all; {one}"
        return one
    option = m.group(1)
    reserved = _reserved_by(option)
    if not reserved:
        return None
    read_as = "" if option in reserved else f" (sbatch reads {option} as {' or '.join(reserved)})"
    if "--export" in reserved or "--export-file" in reserved:
        return (
            f"{' / '.join(reserved)} is set by reatt{read_as}: the job's environment is the one you "
            "submit from, plus [slurm] modules, venv and hf_home (an exported BASH_ENV would run "
            "code in the job)"
        )
    if "--time" in reserved:
        return f"--time is set by reatt{read_as} from [slurm] time (or --time): set it there"
    if set(reserved) & {"--nodes", "--ntasks", "--ntasks-per-node", "--gpus-per-node", "--gpus"}:
        return (
            f"{' / '.join(reserved)} is set by reatt{read_as} from [slurm] nodes, gpus_per_node and "
            "ntasks_per_node (one rank per task): set those instead"
        )
    return (
        f"{' / '.join(reserved)} is set by reatt{read_as}; logs, requeue and status depend on it: "
        "remove this line"
    )


def time_limit_seconds(text: str) -> int | None:
    """Seconds in a Slurm time limit (``90``, ``1:30:00``, ``2-12``, ...); None for unlimited."""
    t = text.strip()
    if t.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        parts = [int(p) for p in t.split(":")] + [0, 0]
        hours, minutes, seconds = parts[0], parts[1], parts[2]
    else:
        parts = [int(p) for p in t.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:
            hours, minutes, seconds = parts
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _rank_problems(settings: SlurmSettings) -> list[str]:
    """Why the GPUs and ranks asked for do not fit together (gpus > 1 trained on one GPU)."""
    s, problems = settings, []
    if s.signal and s.signal not in SIGNALS:
        problems.append(f"slurm.signal = {s.signal!r}: expected one of {', '.join(SIGNALS)}")
    ints = all(isinstance(v, int) for v in (s.gpus, s.gpus_per_node, s.ntasks_per_node, s.nodes))
    if not ints:
        return problems
    if s.signal == "TERM" and s.world_size == 1:
        problems.append(
            "slurm.signal = 'TERM' in a one-process job: Slurm sends it to the batch shell, which "
            "cannot tell it from a scancel (not requeued); use USR1 or USR2 (TERM works with ranks > 1)"
        )
    if s.gpus > 1:
        problems.append(
            f"slurm.gpus = {s.gpus}: one training process uses one GPU, the others would sit idle; "
            f"for {s.gpus} ranks (DDP) set gpus_per_node = {s.gpus} (and nodes) instead of gpus"
        )
    elif s.gpus and s.gpus_per_node:
        problems.append("slurm.gpus and slurm.gpus_per_node are both set: keep gpus_per_node only")
    if s.gpus_per_node and s.ntasks_per_node and s.ntasks_per_node != s.gpus_per_node:
        problems.append(
            f"slurm.ntasks_per_node = {s.ntasks_per_node} but gpus_per_node = {s.gpus_per_node}: "
            "each rank trains on one GPU, so these must be equal (or leave ntasks_per_node at 0)"
        )
    return problems


def check_settings(settings: SlurmSettings) -> None:
    """Refuse settings that would make a broken or unsafe script; every problem in one SpecError."""
    problems = []
    for key, (pattern, expected) in _SBATCH_PATTERNS.items():
        value = getattr(settings, key)
        if key in ("partition", "account", "qos") and value == "":
            continue  # not asked for: the cluster's default
        if not isinstance(value, str) or not pattern.fullmatch(value):
            problems.append(f"slurm.{key} = {value!r}: expected {expected}")
    counts = ("cpus_per_task", "gpus", "nodes", "gpus_per_node", "ntasks_per_node", "signal_seconds")
    for key in (*counts, "array_throttle"):
        value = getattr(settings, key)
        low = 1 if key in ("cpus_per_task", "signal_seconds", "nodes") else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"slurm.{key} = {value!r}: expected an integer >= {low}")
    problems += _rank_problems(settings)
    signal_s = settings.signal_seconds
    if isinstance(signal_s, int) and signal_s > MAX_SIGNAL_SECONDS:
        problems.append(f"slurm.signal_seconds = {signal_s}: Slurm takes at most {MAX_SIGNAL_SECONDS}")
    if isinstance(signal_s, int) and _SBATCH_PATTERNS["time"][0].fullmatch(str(settings.time)):
        limit = time_limit_seconds(settings.time)
        if limit is not None and limit - signal_s < MIN_TRAIN_SECONDS:
            problems.append(
                f"slurm.signal_seconds = {signal_s} leaves less than {MIN_TRAIN_SECONDS} s of "
                f"slurm.time = {settings.time!r} ({limit} s) before the checkpoint signal, which Slurm "
                "may send up to ~30 s early: each attempt would be requeued almost at once; "
                "lower signal_seconds or raise time"
            )
    for key in ("venv", "hf_home"):
        value = getattr(settings, key)
        if has_control(value):
            problems.append(f"slurm.{key} = {value!r}: control characters (newline, tab...) not allowed")
    for module in settings.modules:
        if not module.strip() or has_control(module):
            problems.append(f"slurm.modules: {module!r}: expected a module name like 'python/3.11'")
    for line in settings.extra_sbatch:
        problem = _extra_problem(line)
        if problem is not None:
            problems.append(f"slurm.extra_sbatch: {line!r}: {problem}")
    if problems:
        raise SpecError("invalid Slurm settings:\n  " + "\n  ".join(problems))
