"""The CON2 method on tensors: context and content augmentations, encoder and heads, the two losses,
the training loop, and the anomaly scores S_NND and S_LH with test-time augmentation.

Imports only :mod:`con2lib.config` from outside: no MLflow, papermill, CLI, data loading or
parameter files, so that the method reads (and runs) on its own.
"""
