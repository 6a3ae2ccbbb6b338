"""Encoder structure, schedules and checkpoints."""

import pytest
import torch
import torchvision

from con2lib.method.checkpoint import load_checkpoint, save_checkpoint
from con2lib.method.models import Con2Model, ResNet18Encoder, resolve_stem
from con2lib.method.schedules import cosine_lr, linear_alpha


def test_full_width_imagenet_stem_matches_torchvision_resnet18() -> None:
    ours = {k: v.shape for k, v in ResNet18Encoder(3, 1.0, "imagenet").state_dict().items()}
    ref = {k: v.shape for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    assert ours == ref


@pytest.mark.parametrize("stem,size,spatial", [("cifar", 32, 4), ("stride2", 32, 2), ("imagenet", 64, 2)])
def test_stems_and_grayscale(stem: str, size: int, spatial: int) -> None:
    enc = ResNet18Encoder(1, 0.25, stem).eval()
    x = torch.randn(2, 1, size, size)
    feats = enc.layer4(enc.layer3(enc.layer2(enc.layer1(enc.maxpool(enc.relu(enc.bn1(enc.conv1(x))))))))
    assert feats.shape[-1] == spatial
    assert enc(x).shape == (2, 128)


def test_con2_model_has_two_independent_heads() -> None:
    model = Con2Model(3, width=0.25, stem="cifar", proj_dim=16)
    h, zc, zs = model(torch.randn(4, 3, 16, 16))
    assert h.shape == (4, 128) and zc.shape == zs.shape == (4, 16)
    assert model.context_head.net[0].weight.data_ptr() != model.content_head.net[0].weight.data_ptr()
    assert resolve_stem("auto", 64) == "cifar" and resolve_stem("auto", 224) == "imagenet"


def test_alpha_is_linear_from_start_to_end() -> None:
    values = [linear_alpha(s, 5) for s in range(5)]
    assert values == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert linear_alpha(0, 1) == 1.0 and linear_alpha(99, 5) == 1.0
    assert linear_alpha(2, 5, start=0.5, end=1.0) == 0.75


def test_cosine_lr() -> None:
    assert cosine_lr(0, 10, 1e-3) == pytest.approx(1e-3)
    assert cosine_lr(5, 10, 1e-3) == pytest.approx(5e-4)
    assert cosine_lr(10, 10, 1e-3) == pytest.approx(0.0, abs=1e-12)


def test_checkpoint_roundtrip_weights_only_and_truncation_detected(tmp_path) -> None:
    state = {"model": {"w": torch.arange(1000.0)}, "config": {"dataset": "digits", "folder_normal": ["a"]}}
    path = save_checkpoint(tmp_path / "ckpt.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["config"] == state["config"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
