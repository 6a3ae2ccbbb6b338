"""CUDA-only paths the CPU suite cannot reach (run by benchmarks/gpu_check.sh; skipped without CUDA).

bf16 autocast training steps, the float16 S_NND bank against float32, channels_last, fused AdamW,
torch.compile on a tiny model, the batched augmentations (blur included) and S_LH's ridge on the GPU,
and SyncBatchNorm under torchrun with 2 processes sharing one GPU (gloo: NCCL refuses two ranks on
one device). Every comparison across code paths uses tolerances.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's TINY also when run by torchrun
from con2lib.config import Config  # noqa: E402
from con2lib.method.augment import ContentAugment  # noqa: E402
from con2lib.method.evaluate import auroc, nnd_bank  # noqa: E402
from con2lib.method.models import build_model
from con2lib.method.scores import GaussianScorer, nnd_score_views  # noqa: E402
from con2lib.method.train import make_optimizer, prepare_model, train_step  # noqa: E402
from con2lib.method.views import content_augment_for, make_views

from conftest import ROOT, TINY  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh)")]
GPU = torch.device("cuda")
CFG = {**TINY, "image_size": 16, "device": "cuda"}


def _batch(cfg: Config, device: torch.device) -> tuple[torch.Tensor, ...]:
    images = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return make_views(images.to(device), cfg, content_augment_for(cfg), None)


def test_bf16_autocast_step_matches_float32_on_cpu() -> None:
    cfg = Config.from_params(CFG)
    torch.manual_seed(0)
    model = build_model(cfg, 1)
    cpu_model, gpu_model = copy.deepcopy(model), model.to(GPU)
    views, contexts, ids = _batch(cfg, torch.device("cpu"))
    want = train_step(cfg, cpu_model, torch.optim.SGD(cpu_model.parameters(), lr=0.0), views, contexts, ids, 0.5)
    before = [p.detach().clone() for p in gpu_model.parameters()]
    forward = prepare_model(cfg, gpu_model, GPU)
    got = train_step(cfg, forward, make_optimizer(cfg, gpu_model, GPU), views.to(GPU), contexts.to(GPU), ids.to(GPU), 0.5)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.cpu(), want, rtol=0.05, atol=0.05)  # bf16 matmuls: ~3 significant digits
    assert any(not torch.equal(a, b) for a, b in zip(before, gpu_model.parameters()))  # the step updated


def test_float16_nnd_bank_matches_float32() -> None:
    g = torch.Generator(device=GPU).manual_seed(0)
    train = torch.randn(4, 3000, 512, device=GPU, generator=g)
    test = torch.cat([torch.randn(4, 300, 512, device=GPU, generator=g) * 0.5 + train[:, :300],
                      torch.randn(4, 300, 512, device=GPU, generator=g)], dim=1)
    labels = torch.cat([torch.zeros(300), torch.ones(300)])
    bank = nnd_bank(train)
    assert bank.dtype == torch.float16
    half, full = nnd_score_views(test, bank).float().cpu(), nnd_score_views(test, train).cpu()
    torch.testing.assert_close(half, full, atol=2e-3, rtol=0)
    assert abs(auroc(labels, half) - auroc(labels, full)) < 1e-3


def test_channels_last_and_fused_adamw() -> None:
    cfg = Config.from_params(CFG)
    torch.manual_seed(0)
    model = build_model(cfg, 1).to(GPU)
    reference = copy.deepcopy(model)
    forward = prepare_model(cfg, model, GPU)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 16, 16, device=GPU)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(forward(x)[0], reference(x)[0], rtol=1e-3, atol=1e-3)
    fused = make_optimizer(cfg, model, GPU)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(reference.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    model.train()
    sum(z.square().mean() for z in forward(x)).backward()  # every parameter gets a gradient
    for p, q in zip(model.parameters(), reference.parameters()):  # the same gradients: only the kernels differ
        q.grad = p.grad.clone()
    fused.step()
    plain.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch_compile_on_a_tiny_model() -> None:
    cfg = Config.from_params({**CFG, "compile": True})
    torch.manual_seed(0)
    model = build_model(cfg, 1).to(GPU)
    eager = copy.deepcopy(model).eval()
    compiled = prepare_model(cfg, model, GPU)
    model.eval()
    x = torch.randn(8, 1, 16, 16, device=GPU)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], eager(x)[0], rtol=1e-3, atol=1e-3)
    model.train()
    views, contexts, ids = _batch(cfg, GPU)
    loss = train_step(cfg, compiled, make_optimizer(cfg, model, GPU), views, contexts, ids, 0.5)
    assert torch.isfinite(loss).all()


def test_augmentations_and_lh_ridge_on_the_gpu_match_the_cpu() -> None:
    aug = ContentAugment(224, jitter_strength=1.0, blur_p=0.5)
    x = torch.rand(6, 3, 256, 256)
    u = torch.rand(6, 13, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(aug._augment(x.to(GPU), u.to(GPU), True).cpu(), aug._augment(x, u, True),
                               atol=2e-4, rtol=0)
    feats = torch.randn(3, 300, 512)  # n < D: singular plain covariance
    cpu, gpu = GaussianScorer(0.0).fit(feats), GaussianScorer(0.0).fit(feats.to(GPU))
    assert 0 < gpu.ridge <= 10 * cpu.ridge and 0 < cpu.ridge <= 10 * gpu.ridge  # at most one ladder step apart
    test = torch.randn(3, 20, 512)
    assert torch.isfinite(gpu.score(test.to(GPU))).all()


def test_syncbatchnorm_under_torchrun_two_processes_one_gpu(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", "29517",
               __file__, str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["parts"], result["single"], rtol=2e-2, atol=2e-2)  # bf16 both ways
        for name, (got, want) in result["grads"].items():
            want = torch.zeros_like(got) if want is None else want
            torch.testing.assert_close(got, want, rtol=0.1, atol=2e-3, msg=f"rank {rank}: gradient of {name}")
        assert "SyncBatchNorm" in result["synced"] and "BatchNorm2d" in result["modules"]


def _torchrun_worker(out: Path) -> None:
    """One rank: the single-process step on all views, then this rank's DDP step with SyncBatchNorm."""
    import torch.distributed as dist

    from con2lib.method import distributed

    dist.init_process_group("gloo")  # both ranks on cuda:0; join() then uses this group
    rank = dist.get_rank()
    cfg = Config.from_params(CFG)
    torch.manual_seed(0)
    model = build_model(cfg, 1).to(GPU)
    alone = copy.deepcopy(model)
    views, contexts, ids = _batch(cfg, GPU)
    single = train_step(cfg, alone, torch.optim.SGD(alone.parameters(), lr=0.0), views, contexts, ids, 0.5)
    group = distributed.join(GPU)
    ddp = group.wrap(model)
    synced = sorted({type(m).__name__ for m in model.modules()})
    parts = train_step(cfg, ddp, torch.optim.SGD(model.parameters(), lr=0.0), views, contexts, ids, 0.5, group)
    group.close()
    grads = {k: (p.grad.cpu(), None if q.grad is None else q.grad.cpu())
             for (k, p), q in zip(model.named_parameters(), alone.parameters())}
    torch.save({"parts": parts.cpu(), "single": single.cpu(), "grads": grads, "synced": synced,
                "modules": sorted({type(m).__name__ for m in model.modules()})}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":  # a torchrun rank of test_syncbatchnorm_under_torchrun_two_processes_one_gpu
    _torchrun_worker(Path(sys.argv[1]))
