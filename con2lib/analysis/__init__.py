"""Reading results: baselines (raw-pixel 1-NN, SSD), run diagnostics (``metrics``), the context check
(``contexts``, ``context_probe``), figures (``plots``, ``report_plots``), comparison of logged runs
(``compare``, ``pooling``) and the paper's protocol table (``paper``)."""
