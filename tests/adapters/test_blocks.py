"""The shared building blocks, each against its definition (docs/methods.md)."""

from __future__ import annotations

import math

import pytest
import torch

from adapters.blocks import (
    AugmentConfig,
    cotta_augment,
    cotta_views,
    ema_update,
    entropy,
    soft_cross_entropy,
    stochastic_restore,
    symmetric_cross_entropy,
)
from tests.conftest import image_batch

IDENTITY = AugmentConfig(
    brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(0, 0), gamma=(1, 1), rotation_degrees=0,
    translate_fraction=0, scale=(1, 1), blur_sigma=(1e-3, 1e-3), flip_p=0, noise_std=0,
)  # fmt: skip


def test_ema_follows_the_formula() -> None:
    teacher, student = (
        [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])],
        [torch.tensor([3.0, 0.0]), torch.tensor([[5.0]])],
    )
    ema_update(teacher, student, alpha=0.999)
    torch.testing.assert_close(teacher[0], 0.999 * torch.tensor([1.0, 2.0]) + 0.001 * torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(teacher[1], torch.tensor([[0.999 * 3 + 0.001 * 5]]))
    with pytest.raises(ValueError, match="alpha"):
        ema_update(teacher, student, alpha=1.5)


def test_stochastic_restore_resets_a_fraction_p_to_the_source() -> None:
    source = [torch.zeros(1000, 1000)]
    params = [torch.ones(1000, 1000)]
    restored = stochastic_restore(params, source, p=0.01, generator=torch.Generator().manual_seed(0))
    assert restored == int((params[0] == 0).sum())
    expected, std = 1e6 * 0.01, math.sqrt(1e6 * 0.01 * 0.99)
    assert abs(restored - expected) < 4 * std
    assert set(params[0].unique().tolist()) == {0.0, 1.0}  # every element is either kept or the source value


def test_stochastic_restore_is_reproducible_under_a_generator() -> None:
    a, b = [torch.ones(100)], [torch.ones(100)]
    stochastic_restore(a, [torch.zeros(100)], 0.3, torch.Generator().manual_seed(5))
    stochastic_restore(b, [torch.zeros(100)], 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0])


def test_cross_entropies() -> None:
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    torch.testing.assert_close(soft_cross_entropy(s, s), entropy(s))
    assert (soft_cross_entropy(s, t) >= entropy(t) - 1e-5).all()  # Gibbs' inequality
    torch.testing.assert_close(symmetric_cross_entropy(s, t), symmetric_cross_entropy(t, s))
    torch.testing.assert_close(symmetric_cross_entropy(s, t, alpha=1.0), soft_cross_entropy(s, t))


def test_symmetric_cross_entropy_sends_gradient_through_both_terms() -> None:
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10)
    (grad_sce,) = torch.autograd.grad(symmetric_cross_entropy(s, t).sum(), s)
    (grad_ce,) = torch.autograd.grad(0.5 * soft_cross_entropy(s, t).sum(), s)
    assert not torch.allclose(grad_sce, grad_ce)


def test_augmentation_draws_one_transform_per_batch() -> None:
    image = image_batch(1)
    batch = image.expand(4, -1, -1, -1).clone()
    out = cotta_augment(batch, torch.Generator().manual_seed(1), AugmentConfig(noise_std=0))
    for i in range(1, 4):
        torch.testing.assert_close(out[i], out[0])
    assert not torch.allclose(out[0], image[0], atol=1e-3)


def test_augmentation_is_seeded_bounded_and_shape_preserving() -> None:
    x = image_batch(8)
    a = cotta_augment(x, torch.Generator().manual_seed(3))
    b = cotta_augment(x, torch.Generator().manual_seed(3))
    c = cotta_augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("views_per_pass", [1, 3, 8])
def test_batched_views_are_the_one_at_a_time_views(views_per_pass: int) -> None:
    from tests.adapters.reference_augment import reference_cotta_augment

    x = image_batch(6)
    reference_generator, generator = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    expected = torch.stack([reference_cotta_augment(x, reference_generator) for _ in range(8)])
    config = AugmentConfig(views_per_pass=views_per_pass)
    got = torch.cat(
        [cotta_views(x, generator, min(views_per_pass, 8 - s), config) for s in range(0, 8, views_per_pass)]
    )
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    assert torch.equal(generator.get_state(), reference_generator.get_state())  # the same draws, in order
    assert (got[0] - got[1]).abs().max() > 0.05  # views really differ


def test_augmentation_with_degenerate_ranges_is_the_identity() -> None:
    x = image_batch(4)
    torch.testing.assert_close(cotta_augment(x, torch.Generator().manual_seed(0), IDENTITY), x, atol=1e-5, rtol=0)


def test_augmentation_ranges_move_the_image() -> None:
    x = image_batch(2)
    brighter = IDENTITY.model_copy(update={"brightness": (1.3, 1.3)})
    torch.testing.assert_close(cotta_augment(x, torch.Generator(), brighter), (x * 1.3).clamp(0, 1), atol=1e-5, rtol=0)
    flipped = IDENTITY.model_copy(update={"flip_p": 1.0})
    torch.testing.assert_close(cotta_augment(x, torch.Generator(), flipped), x.flip(-1), atol=1e-5, rtol=0)
    assert AugmentConfig.soft().rotation_degrees == 8.0


def test_crop_and_flip_takes_a_seeded_window_of_the_reflect_padded_image() -> None:
    from adapters.blocks import crop_and_flip

    x = torch.rand(9, 3, 8, 8)
    out = crop_and_flip(x, torch.Generator().manual_seed(5), pad=2)
    generator = torch.Generator().manual_seed(5)  # the same draws, in the same order
    offsets = torch.randint(0, 5, (9, 2), generator=generator)
    flips = torch.rand(9, generator=generator) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i, (dy, dx) in enumerate(offsets.tolist()):
        window = padded[i, :, dy : dy + 8, dx : dx + 8]
        torch.testing.assert_close(out[i], window.flip(2) if flips[i] else window, rtol=0, atol=0)
    assert not torch.equal(out, crop_and_flip(x, torch.Generator().manual_seed(6), pad=2))
