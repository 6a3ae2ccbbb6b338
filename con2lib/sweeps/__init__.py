"""Grids of runs: the sweep file and its points (``grid``), where they run (``backends``: local
processes; ``slurm``: a cluster through submitit), the results table (``report``) and the
``con2 sweep`` command (``commands``)."""
