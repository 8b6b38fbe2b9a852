"""Slurm: ``settings`` (the [slurm] table), ``render`` (sbatch scripts), ``client`` (Slurm's
commands), ``logs`` (what a job's .err says), ``executor`` (``SlurmExecutor``)."""
