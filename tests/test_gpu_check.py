"""benchmarks/gpu_check.sh on a machine without CUDA, and its step bookkeeping with a stand-in python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run the checks")
def test_without_cuda_it_says_so_in_one_line_and_exits_0() -> None:
    proc = subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check, exit 0"]


def _fake_python(tmp_path: Path, failing: str) -> Path:
    """A python that reports CUDA, runs small -c / stdin snippets for real and fakes every step."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$*" in
  *cuda.is_available*) exit 0 ;;
  *get_device_name*) echo "gpu_check: fake GPU"; exit 0 ;;
  *{failing}*) echo "step fails: $*"; exit 3 ;;
esac
if [ "$1" = -c ] || [ "$1" = - ]; then exec {sys.executable} "$@"; fi
echo "ran: $*"
""")
    fake.chmod(0o755)
    (tmp_path / "data" / "FashionMNIST" / "raw").mkdir(parents=True)
    return fake


@pytest.mark.parametrize("failing, last, rc", [
    ("no-such-step", "gpu_check: passed=5 failed=0 skipped=0", 0),
    ("benchmarks.scores", "gpu_check: passed=4 failed=1 skipped=0", 1),
])
def test_every_step_runs_and_the_last_line_counts_them(tmp_path: Path, failing: str, last: str, rc: int) -> None:
    env = {**os.environ, "PYTHON": str(_fake_python(tmp_path, failing)), "GPU_CHECK_DATA": str(tmp_path / "data"),
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert lines[-1].startswith(last) and "oneclass_minutes=" in lines[-1] and "total_minutes=" in lines[-1]
    ran = "\n".join(line for line in lines if line.startswith("ran: ") or line.startswith("step fails: "))
    for needle in ("-m pytest -q -m cuda", "train_throughput --device cuda --size 32 --quick",
                   "train_throughput --device cuda --size 224 --quick", "benchmarks.scores --device cuda --quick",
                   "con2lib.cli run params/presets/gpu.yaml"):
        assert needle in ran, needle
