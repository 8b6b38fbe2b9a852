"""The study wing: a spec (``spec``), its record (``store``, ``plan``), and what happens to its
runs: ``submit`` (through an executor), ``status`` and ``cancel``, ``collect``."""
