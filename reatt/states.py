"""The states a run of a study can be in (stored in the database's ``runs.state``)."""

# A run is "active" while Slurm (or the local executor) holds it.
PLANNED = "planned"
PENDING = "pending"
RUNNING = "running"
REQUEUED = "requeued"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TIMEOUT = "timeout"
PREEMPTED = "preempted"
INTERRUPTED = "interrupted"  # stopped by a signal with a checkpoint saved (exit 75), not requeued
BROKEN = "broken"  # collect found the run directory missing or unreadable
UNKNOWN = "unknown"
ACTIVE_STATES = frozenset({PENDING, RUNNING, REQUEUED})
RESUBMITTABLE_STATES = frozenset({FAILED, CANCELLED, TIMEOUT, PREEMPTED, INTERRUPTED, BROKEN, UNKNOWN})
ALL_STATES = (
    PLANNED,
    PENDING,
    RUNNING,
    REQUEUED,
    COMPLETED,
    FAILED,
    CANCELLED,
    TIMEOUT,
    PREEMPTED,
    INTERRUPTED,
    BROKEN,
    UNKNOWN,
)
