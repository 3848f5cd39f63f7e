"""What every registered method hands back (issue 9): the clean output from its own pass,
callable targets seen one row per image, and SmoothGrad noise independent of the dtype."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.helpers.methods import SMALL
from torch import nn

from convlens.attribution.explain import explain
from convlens.attribution.gradients import smoothgrad
from convlens.attribution.methods import list_methods
from convlens.attribution.registry import MethodResult
from convlens.errors import TargetError

METHODS = [m.name for m in list_methods()]


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """conv(3->6) ReLU conv(6->6) ReLU GAP linear(6->5): CAM layer "3", a GAP + linear head."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


def _images(count: int) -> torch.Tensor:
    return torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(count))


def _options(name: str, **extra) -> dict:
    info = next(m for m in list_methods() if m.name == name)
    return ({"layer": "3"} if info.uses_layer else {}) | SMALL.get(name, {}) | extra


def _run(net, images, name, target, **extra):
    info = next(m for m in list_methods() if m.name == name)
    return info.run(net, images, target, **_options(name, **extra))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", METHODS)
def test_explain_scores_from_the_methods_own_clean_pass(net, method):
    """`explain` runs exactly the forward passes of the method (no scoring pass of its own),
    and its scores and output are those of the unmodified images."""
    images = _images(2)
    logits = net(images).detach()
    sizes = []
    handle = net.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        result = _run(net, images, method, [3, 1])
        alone = list(sizes)
        sizes.clear()
        explained = explain(net, images, method, target=[3, 1], **_options(method))
    finally:
        handle.remove()
    assert isinstance(result, MethodResult)
    assert sizes == alone
    torch.testing.assert_close(result.output, logits)
    torch.testing.assert_close(explained.output, logits)
    torch.testing.assert_close(explained.scores, logits[[0, 1], [3, 1]])
    torch.testing.assert_close(explained.probabilities, logits.softmax(1)[[0, 1], [3, 1]])
    assert explained.class_ids.tolist() == [3, 1]


def _gather(ids: torch.Tensor):
    """The issue's callable: each image's class ``ids[i]`` from a ``[B, K]`` output."""
    return lambda out: out.gather(1, ids[:, None].to(out.device))[:, 0]


def _gather_probability(ids: torch.Tensor):
    """Score-CAM scores class targets by softmax probability; the callable does the same."""
    return lambda out: out.softmax(1).gather(1, ids[:, None].to(out.device))[:, 0]


CHUNKED = [m.name for m in list_methods() if "batch_size" in m.options]
CALLABLE_CASES = [(m, 8, None) for m in METHODS if m not in ("cam", "finercam")] + [
    (m, count, size) for m in CHUNKED for count, size in [(8, 3), (2, None)]
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method, count, batch_size", CALLABLE_CASES)
def test_callable_target_equals_the_same_class_ids(net, method, count, batch_size):
    """A callable that indexes per image gives the maps of the equivalent id list, with 8
    images (chunks of copies of one image), fewer images than a chunk, and odd chunks."""
    images = _images(count)
    ids = torch.tensor([4, 0, 2, 1, 3, 0, 4, 2])[:count]
    extra = {} if batch_size is None else {"batch_size": batch_size}
    seen = []
    score = _gather_probability(ids) if method == "scorecam" else _gather(ids)

    def spy(out):
        seen.append(out.shape[0])
        return score(out)

    by_callable = _run(net, images, method, spy, **extra).maps
    by_ids = _run(net, images, method, ids.tolist(), **extra).maps
    assert all(rows == count for rows in seen)  # always one row per user image
    assert seen or method == "eigencam"  # (class-agnostic: it never scores)
    scale = float(by_ids.abs().amax())
    assert scale > 0
    torch.testing.assert_close(by_callable, by_ids, atol=1e-5 * scale, rtol=1e-4)


def test_cam_refuses_a_callable_target(net):
    with pytest.raises(TargetError, match="use gradcam"):
        explain(net, _images(2), "cam", target=_gather(torch.tensor([0, 1])), layer="3")


def test_smoothgrad_noise_is_the_same_for_float32_and_float64(net):
    """The noise is drawn in float32 and cast, so one seed gives one noise in both dtypes
    (drawn in each dtype, the maps correlated at r = 0.39)."""
    images = _images(2)
    single = smoothgrad(net, images, [1, 3], n_samples=4, seed=3)
    double = smoothgrad(copy.deepcopy(net).double(), images.double(), [1, 3], n_samples=4, seed=3)
    assert double.dtype == torch.float64
    r = torch.corrcoef(torch.stack([single.flatten(), double.float().flatten()]))[0, 1]
    assert float(r) > 0.99
    torch.testing.assert_close(double.float(), single, atol=1e-4, rtol=1e-3)
