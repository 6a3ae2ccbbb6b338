"""Multi-process training (con2lib.method.distributed) on CPU with gloo: 2 processes compute the single-process loss
and gradients of the whole batch, and a short fit() ends with the same weights on both ranks."""

from __future__ import annotations

import copy
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from con2lib.config import Config
from con2lib.method import distributed
from con2lib.method.models import build_model
from con2lib.method.train import fit, train_step
from con2lib.method.views import content_augment_for, make_views
from con2lib.runs import ddp_worker

from conftest import TINY

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Any, *args: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs ``fn(rank, port, *args)`` in WORLD fresh processes joined by a gloo process group."""
    # an earlier in-process IPython test may leave a __main__ without __spec__, which spawn reads
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    mp.start_processes(_in_group, args=(free_port(), fn, *args), nprocs=WORLD, start_method="spawn")


def _in_group(rank: int, port: int, fn: Any, *args: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def _step_both_ways(rank: int, loss: str, out: Path) -> None:
    """One train_step on the same batch: alone on all the views, and as this rank of DDP."""
    cfg = Config.from_params({**TINY, "loss": loss})
    torch.manual_seed(0)
    model = build_model(cfg, in_channels=1)
    alone = copy.deepcopy(model)
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    views, contexts, ids = make_views(images, cfg, content_augment_for(cfg), torch.Generator().manual_seed(2))
    # lr 0: the step leaves the weights as they are and the gradients in .grad
    single = train_step(cfg, alone, torch.optim.SGD(alone.parameters(), lr=0.0), views, contexts, ids, 0.5)
    group = distributed.join(torch.device("cpu"))
    ddp = group.wrap(model)
    parts = train_step(cfg, ddp, torch.optim.SGD(model.parameters(), lr=0.0), views, contexts, ids, 0.5, group)
    group.close()
    grads = {k: (p.grad, q.grad) for (k, p), q in zip(model.named_parameters(), alone.parameters())}
    torch.save({"parts": parts, "single": single, "grads": grads, "buffers": list(zip(model.buffers(),
                                                                                      alone.buffers())),
                "modules": sorted({type(m).__name__ for m in model.modules()})}, out / f"rank{rank}.pt")


@pytest.mark.parametrize("loss", ["con2", "simclr"])
def test_gathered_loss_and_gradients_equal_the_single_process_ones(tmp_path, monkeypatch, loss) -> None:
    spawn(_step_both_ways, loss, tmp_path, monkeypatch=monkeypatch)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["parts"], result["single"], rtol=1e-5, atol=1e-6)
        for name, (got, want) in result["grads"].items():
            want = torch.zeros_like(got) if want is None else want  # a head this loss ignores: zeros under DDP
            # equal, not world x or 1/world x: DDP's mean of the summed gathers is the single-process gradient
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"rank {rank}: gradient of {name}")
        for got, want in result["buffers"]:  # BatchNorm running statistics: those of the whole batch
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert "BatchNorm2d" in result["modules"] and "GlobalBatchNorm" not in result["modules"]  # put back
    for (name, (a, _)), (b, _) in zip(results[0]["grads"].items(), results[1]["grads"].values()):
        assert torch.equal(a, b), name


def _fit(rank: int, out: Path) -> None:
    """Rank 0 trains as the notebook does; rank 1 as a torchrun worker (receives config and images)."""
    if rank:
        model = ddp_worker.train_worker(torch.device("cpu"))
        torch.save({"state": model.state_dict()}, out / "rank1.pt")
        return
    from con2lib.data import load_dataset

    cfg = Config.from_params({**TINY, "epochs": 2, "checkpoint_every": 1})
    torch.manual_seed(0)
    images = load_dataset(cfg).train
    model = build_model(cfg, in_channels=1)
    history = fit(cfg, model, images, progress=False, checkpoint=out / "checkpoint.pt")
    torch.save({"state": model.state_dict(), "losses": [h.loss for h in history]}, out / "rank0.pt")


def test_fit_on_two_processes_ends_with_the_same_weights_on_both_ranks(tmp_path, monkeypatch) -> None:
    spawn(_fit, tmp_path, monkeypatch=monkeypatch)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert len(rank0["losses"]) == 2 and torch.isfinite(torch.tensor(rank0["losses"])).all()
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "rank0.pt", "rank1.pt"]  # rank 0's only


def test_torchrun_con2_run_trains_on_two_processes_into_one_run(fast_store, tmp_path) -> None:
    import subprocess

    import yaml
    from mlflow.tracking import MlflowClient

    from conftest import ROOT, make_experiment

    make_experiment("ddp", tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY, "experiment": "ddp"}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
               "-m", "con2lib.cli", "run", str(params)]
    proc = subprocess.run(command, cwd=ROOT, env={**fast_store, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])  # rank 0's only
    executed = (Path(fast_store["CON2_RUNS_DIR"]) / run.info.run_id / "train.ipynb").read_text()
    assert "training with DistributedDataParallel on 2 processes (gloo)" in executed  # the kernel was rank 0
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["auroc_nnd"] <= 1
    assert len(client.get_metric_history(run.info.run_id, "loss")) == TINY["epochs"]
