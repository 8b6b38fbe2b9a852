"""Where runs execute: ``base`` (the ``Executor`` protocol), ``local`` (processes on this
machine), ``slurm`` (sbatch jobs), and ``registry`` (the executor of each recorded kind)."""
