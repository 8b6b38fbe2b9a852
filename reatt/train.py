"""``python -m reatt.train [--key=value ...]``: train one variant (``reatt.training.run``).

Also how every launcher starts it (``reatt submit``, the sbatch templates, ``reatt train``):
``TRAIN_MODULE`` run with ``TRAIN_ENV`` in its environment. The allocator setting keeps glibc
from returning the large logits buffers to the OS and page-faulting them back in every step:
1.2-1.6x faster on CPU (docs/benchmarks.md). It must be set before Python starts, so it goes
into the environment of the training process. Importing this module does not import torch.
"""

from __future__ import annotations

import sys

GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295"
TRAIN_ENV = {"GLIBC_TUNABLES": GLIBC_TUNABLES, "PYTHONUNBUFFERED": "1"}
TRAIN_MODULE = "reatt.train"  # run as: python -m reatt.train <JobSpec.argv()>


def main(argv: list[str] | None = None) -> int:
    """Train the variant ``argv`` describes; returns the exit code (reatt.rundir.EXIT_*)."""
    from reatt.training.run import main as run_main

    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
