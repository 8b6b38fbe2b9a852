"""``python -m reatt`` is the ``reatt`` CLI."""

from reatt.cli import main

main()
