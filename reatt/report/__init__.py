"""The report: a study's answer from the database. ``build`` aggregates (with ``stats`` and
``comparable``), ``tables`` and the figures (``curves``, ``finals``) render, ``write`` writes."""
