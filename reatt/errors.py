"""The errors reatt reports to users: one line each, no traceback.

Every error a user can fix by changing their input derives from ``ReattError``; the
entry points (``python -m reatt.train`` and the ``reatt`` CLI) print its message and
exit non-zero. Anything else is a bug and keeps its traceback.
"""


class ReattError(Exception):
    "A problem with the user's input or environment, stated so they can fix it."


class ConfigError(ReattError):
    "An unknown config key, a value of the wrong type, or an inconsistent config."


class DataError(ReattError):
    "The training data cannot be read or is unusable (file, line and reason given)."


class TokenizerError(ReattError):
    "No usable GPT-2 tokenizer could be loaded without the network."


class RunDirError(ReattError):
    "A run directory holds something that conflicts with the requested run."


class SpecError(ReattError):
    "An ablation spec file is invalid (file, run and key given)."


class StudyError(ReattError):
    "A study is missing, ambiguous, or conflicts with what the database holds."


class SlurmError(ReattError):
    "A Slurm command is missing or failed (its stderr is quoted)."


class DatabaseError(ReattError):
    "The results database cannot be opened or has an incompatible schema."
