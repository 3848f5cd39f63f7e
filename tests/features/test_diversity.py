"""The diversity term (Olah et al. 2017) on hand-built activations: its value for identical,
orthogonal and single pictures, crops grouped by picture, and that it pushes pictures apart."""

from __future__ import annotations

import torch

from convlens.features.objectives import Seen, diversity


def _seen(activation: torch.Tensor, crops: int = 1) -> Seen:
    return Seen(
        torch.zeros(activation.shape[0], 3, 2, 2), {"x": activation}, torch.zeros(1), crops=crops
    )


def test_diversity_values_on_hand_built_grams():
    term = diversity("x", weight=2.0)
    same = torch.rand(1, 4, 3, 3).expand(3, -1, -1, -1)
    torch.testing.assert_close(term(_seen(same)), torch.full((3,), -2.0))
    apart = torch.zeros(2, 4, 3, 3)
    apart[0, 0], apart[1, 1] = 1.0, 1.0  # disjoint channels: orthogonal Gram matrices
    torch.testing.assert_close(term(_seen(apart)), torch.zeros(2))
    assert term(_seen(same[:1])).tolist() == [0.0]  # one picture has nothing to differ from


def test_diversity_groups_crops_by_picture():
    """Two pictures of two crops each: one picture's crops are the same, so the value equals
    that of the pictures alone, repeated per crop."""
    gen = torch.Generator().manual_seed(0)
    pictures = torch.rand(2, 4, 3, 3, generator=gen)
    alone = diversity("x")(_seen(pictures))
    cropped = diversity("x")(_seen(pictures.repeat_interleave(2, dim=0), crops=2))
    torch.testing.assert_close(cropped, alone.repeat_interleave(2))


def test_ascending_the_diversity_term_makes_pictures_less_alike():
    gen = torch.Generator().manual_seed(1)
    activation = (torch.rand(3, 4, 3, 3, generator=gen) + 1.0).requires_grad_(True)
    term = diversity("x")
    before = term(_seen(activation)).sum()
    (grad,) = torch.autograd.grad(before, activation)
    after = term(_seen(activation.detach() + 0.1 * grad)).sum()
    assert after > before


def test_the_gram_of_a_flat_activation_is_refused_with_the_fix():
    import pytest

    from convlens.errors import LayerError
    from convlens.features.gram import gram_from_activation

    with pytest.raises(LayerError, match=r"spatial output \[B, C, h, w\], got \(2, 6\)"):
        gram_from_activation(torch.rand(2, 6))
