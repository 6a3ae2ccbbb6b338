"""con2lib: the CON2 anomaly-detection method (context contrasting + content alignment).

The package is built in layers; each imports only those listed before it (tests/test_layers.py):

- ``config`` (with ``checks``), ``paths``, ``paramfiles``: the one typed :class:`~con2lib.config.Config` and the
  parameter files it is built from.
- :mod:`con2lib.method`: the method itself (augmentations, encoder and heads, losses, training loop,
  scores) on tensors; no MLflow, papermill, CLI, data loading or parameter files.
- :mod:`con2lib.data`: data sets on disk to uint8 tensors; knows nothing of training.
- :mod:`con2lib.runs`: one run from a params file to MLflow (notebook execution, tracking, resume).
- :mod:`con2lib.analysis`: baselines, diagnostics, context check, figures, comparison of runs.
- :mod:`con2lib.serving`: a trained run as a served model with a calibrated threshold.
- :mod:`con2lib.sweeps`: grids of runs, locally or on a cluster.
- ``cli``: the ``con2`` command.

docs/architecture.md draws the path from a params file to the MLflow store.
"""

__version__ = "0.1.0"
