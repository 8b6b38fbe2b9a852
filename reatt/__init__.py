"""reatt: architecture ablations of a small GPT, from one training run to a Slurm study."""

__version__ = "0.1.0"
