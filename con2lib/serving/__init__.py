"""A trained run as a served model: the model in plain torch (``scoring_model``), as an MLflow pyfunc
(``pyfunc_model``), the inputs it takes (``model_inputs``), its calibrated threshold (``calibration``)
and the ``con2 score`` / ``con2 register`` commands (``commands``)."""
