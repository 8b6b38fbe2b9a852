"""The ``reatt`` command line: plan, submit, status, cancel, collect, report, compare, export, train.

Each command parses its options, calls one plain function of ``reatt.study`` or
``reatt.report`` (which tests call directly), and prints the result. The commands register on
``app`` (``reatt.cli.app``) in the order ``reatt --help`` lists them.
"""

from reatt.cli import plan, submit, status, collect, report, share, train  # noqa: F401, I001  (registers them, in order)
from reatt.cli.app import app, main

__all__ = ["app", "main"]
