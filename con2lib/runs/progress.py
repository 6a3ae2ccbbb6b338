"""What a user of ``con2 run`` sees: progress lines on the terminal, a readable executed notebook.

``fit`` prints one line per epoch (:func:`con2lib.method.epochs.epoch_line`, starting with ``PREFIX``);
the notebook keeps them, and :class:`StreamEcho` (papermill's ``stdout_file``) copies them to the terminal as the kernel
writes them, so ``con2 run`` and every worker of ``con2 sweep`` show epoch, loss, speed and ETA. The
notebook also says which phase it is in (:func:`phase`: loading data, training, scoring, ...) and shows
every warning as lines of their own (:func:`forward_warnings`); both reach the terminal the same way,
even with ``--quiet`` and in sweeps, so a skipped image or a weak threshold is never said only in a file.
:func:`known_parameters` keeps papermill quiet about valid parameters; :func:`notebook_html` makes
the executed notebook readable in the MLflow artifact viewer.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from con2lib.method.epochs import PREFIX, duration

PHASE_PREFIX = "phase: "  # what the run is doing now (:func:`phase`)
WARNING_PREFIX = "warning: "  # every line of a warning (:func:`forward_warnings`)
# the lines a terminal sees even when quiet: progress, phases, warnings
ECHOED = (PREFIX, PHASE_PREFIX, WARNING_PREFIX)


LONG_RUN_S = 3600  # a run whose training is estimated to take longer says so after its first epoch


class LongRunWarning(UserWarning):
    """Training will take more than :data:`LONG_RUN_S` (estimated from the first epoch)."""


def long_run_estimate(elapsed_s: float, done_here: int, epochs_left: int) -> str | None:
    """The warning text when training will take more than :data:`LONG_RUN_S` in all, else None.

    Args:
        elapsed_s: seconds this process has trained so far.
        done_here: epochs this process has trained.
        epochs_left: epochs still to train.
    """
    per_epoch = elapsed_s / max(done_here, 1)
    left = per_epoch * epochs_left
    if elapsed_s + left <= LONG_RUN_S:
        return None
    return (f"training will take about {duration(left)} more ({epochs_left} epochs left at {duration(per_epoch)} "
            "each); Ctrl-C stops it and the same command continues it from its last checkpoint. On a CPU, "
            "params/presets/cpu.yaml (your own images: params/folder_cpu.yaml) trains in minutes")


def phase(what: str) -> None:
    """Prints ``phase: <what>`` at once: no silent stretch while data loads, the test set is scored, figures render."""
    print(f"{PHASE_PREFIX}{what}", flush=True)


def warning_lines(message: Warning | str, category: type[Warning]) -> str:
    """A warning as text whose every line starts with :data:`WARNING_PREFIX` (a list of skipped files too)."""
    lines = f"{category.__name__}: {message}".splitlines() or [category.__name__]
    return "".join(f"{WARNING_PREFIX}{line}\n" for line in lines)


def forward_warnings(stream: TextIO | None = None) -> None:
    """Shows every warning from now on as :func:`warning_lines` on ``stream`` (default: ``sys.stdout``).

    Called in the notebook's first cell. A kernel writes warnings to its stderr, which papermill keeps
    in the notebook but does not pass on; on stdout, prefixed line by line, :class:`StreamEcho` copies
    them to the terminal of ``con2 run`` and of a sweep, multi-line messages whole.
    """
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        out = stream or sys.stdout  # looked up now: the kernel replaces sys.stdout per cell
        out.write(warning_lines(message, category))
        out.flush()

    warnings.showwarning = show


class StreamEcho:
    """A write-only text stream that copies a notebook's stdout to ``target``, whole lines at a time.

    Args:
        target: where lines go (the terminal: ``sys.stdout``).
        everything: copy every line; otherwise only progress, phase and warning lines (:data:`ECHOED`).
        label: put before every copied line (a sweep point), e.g. ``"[point 3] "``.
    """

    def __init__(self, target: TextIO, everything: bool = False, label: str = "") -> None:
        self.target, self.everything, self.label = target, everything, label
        self._partial = ""

    def write(self, text: str) -> int:
        """Copies the complete lines of ``text`` (the rest waits for its newline)."""
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1]  # what a terminal would show of a redrawn line
            if self.everything or line.startswith(ECHOED):
                self.target.write(f"{self.label}{line}\n")
        return len(text)

    def flush(self) -> None:
        """Flushes the target (papermill flushes after every output)."""
        self.target.flush()


class _KnownParameters(logging.Filter):
    """Drops papermill's "Passed unknown parameter: x" for the parameters in ``known``."""

    def __init__(self, known: Iterable[str]) -> None:
        super().__init__()
        self.known = set(known)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Passed unknown parameter: ")
                    and message.removeprefix("Passed unknown parameter: ") in self.known)


@contextlib.contextmanager
def known_parameters(names: Iterable[str]) -> Iterator[None]:
    """Within the block papermill does not warn about ``names``.

    The notebook's parameters cell lists the common parameters only; every other field of the config
    is valid too (validated before papermill starts), so a warning for it would be noise.
    """
    logger = logging.getLogger("papermill")
    quiet = _KnownParameters(names)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def notebook_html(notebook: Path) -> Path:
    """Writes the executed notebook as HTML next to it (same name, ``.html``); returns that path.

    Text, tables and images are kept; interactive plotly outputs are left out (the run logs each
    figure under ``figures/``), so the page stays small.
    """
    import nbconvert
    import nbformat

    with warnings.catch_warnings():  # said once per plotly output; the figures are artifacts of their own
        warnings.filterwarnings("ignore", "Your element with mimetype")
        html, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    path = notebook.with_suffix(".html")
    path.write_text(html, encoding="utf-8")
    return path
