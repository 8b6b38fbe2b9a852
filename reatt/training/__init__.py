"""The training wing: one run of one variant, from its config to its run directory.

Nothing here imports the orchestration (``reatt.study``, ``reatt.executors``, ``reatt.report``,
``reatt.cli``). torch is imported only by the modules that train (dataset, model, trainer) and
inside the functions of ``run`` and ``checkpoint`` that need it.
"""
