"""The report: a study's answer from the database. ``build`` aggregates (with ``stats`` and
``comparable``), ``tables`` and the figures (``curves``, ``finals``) render, ``write`` writes.

The formats are named here, with no import, for the CLI's ``--format`` choices (``reatt report``,
``reatt export``): ``reatt --help`` loads nothing of the report."""

from enum import Enum


class ReportFormat(str, Enum):
    """What ``reatt report --format`` prints; "table" (the rich table) is printed only."""

    table = "table"
    markdown = "markdown"
    csv = "csv"
    latex = "latex"


FORMATS = tuple(f.value for f in ReportFormat)


class ExportFormat(str, Enum):
    """What ``reatt export --format`` writes (``reatt.report.export``)."""

    csv = "csv"
    parquet = "parquet"
