"""Context augmentations against torchvision; batched content augmentations' guarantees."""

import pytest
import torch
from torchvision.transforms import functional as F_v1

from con2lib.method.augment import ContentAugment, context_augment, normalize


def uint8_batch(b: int = 4, c: int = 3, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)


def test_invert_flip_equalize_match_torchvision() -> None:
    u8 = uint8_batch()
    x = u8.float() / 255
    assert torch.allclose(context_augment(x, "invert"), F_v1.invert(x))
    assert torch.equal(context_augment(x, "flip"), F_v1.vflip(x))
    expected = torch.stack([F_v1.equalize(img) for img in u8]).float() / 255  # uint8 reference, per image
    assert torch.allclose(context_augment(x, "equalize"), expected, atol=1e-6)


def test_equalize_matches_pil_on_grayscale_with_few_levels() -> None:
    from PIL import Image, ImageOps

    u8 = (torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8) // 8) * 20 + 30  # 8 grey levels
    pil = ImageOps.equalize(Image.fromarray(u8[0, 0].numpy()))
    got = context_augment(u8.float() / 255, "equalize")
    assert torch.allclose(got[0, 0] * 255, torch.tensor(list(pil.getdata()), dtype=torch.float32).view(8, 8), atol=1e-3)


@pytest.mark.parametrize("name", ["invert", "flip", "equalize"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_context_keeps_dtype_device_shape(name: str, dtype: torch.dtype) -> None:
    x = (uint8_batch(c=1).to(dtype) / 255)
    y = context_augment(x, name)
    assert y.dtype == dtype and y.device == x.device and y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1


def test_unknown_context_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown context augmentation 'rotate'"):
        context_augment(torch.zeros(1, 1, 4, 4), "rotate")


def test_content_augment_identity_when_all_randomness_is_off() -> None:
    x = uint8_batch(c=3, h=16, w=16).float() / 255
    aug = ContentAugment(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0,
                         jitter_p=0.0, grayscale_p=0.0)
    assert torch.allclose(aug(x), x, atol=1e-5)


def test_content_augment_per_sample_parameters() -> None:
    x = (uint8_batch(b=1, c=3, h=16, w=16).float() / 255).repeat(6, 1, 1, 1)
    out = ContentAugment(size=12)(x, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 12, 12) and out.min() >= 0 and out.max() <= 1
    # identical inputs, different random parameters per image
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 6
    shared = ContentAugment(size=12)(x, torch.Generator().manual_seed(0), shared=True)
    for s in shared:  # one parameter set; rows may take other SIMD paths (FMA or not): equal within rounding
        torch.testing.assert_close(s, shared[0], rtol=0, atol=1e-6)


def test_content_augment_reproducible_with_generator_and_grayscale_input() -> None:
    x = uint8_batch(b=5, c=1, h=20, w=20).float() / 255
    aug = ContentAugment(size=16)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (5, 1, 16, 16)


def test_hflip_only_mirrors_width() -> None:
    x = uint8_batch(b=2, c=3, h=8, w=8).float() / 255
    aug = ContentAugment(size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=1.0, jitter_p=0.0,
                         grayscale_p=0.0)
    assert torch.allclose(aug(x), x.flip(-1), atol=1e-5)


def test_grayscale_always_gives_equal_channels() -> None:
    x = uint8_batch(b=3, c=3, h=8, w=8).float() / 255
    aug = ContentAugment(size=8, grayscale_p=1.0, jitter_p=0.0)
    y = aug(x)
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])


def test_jitter_matches_torchvision_brightness_and_contrast_on_grayscale() -> None:
    # with one channel, jitter is brightness then contrast; check against torchvision's kernels
    x = uint8_batch(b=1, c=1, h=8, w=8).float() / 255
    aug = ContentAugment(size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=1.0,
                         jitter_strength=0.5)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(1, 11, generator=torch.Generator().manual_seed(0))
    bri, con = 1 + 0.4 * (2 * u[0, 5:7] - 1)
    expected = F_v1.adjust_contrast(F_v1.adjust_brightness(x, float(bri)), float(con))
    assert torch.allclose(aug(x, g), expected, atol=1e-5)


def test_normalize_maps_unit_interval_to_minus_one_one() -> None:
    assert torch.equal(normalize(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
