"""Models whose output is not a logit vector: dict, tuple and ``ModelOutput``-like outputs
(one tensor picked once, where the model is borrowed), embedding models explained by their
similarity to a reference, and scalar regression outputs."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.networks import (
    StructuredOutputNet,
    embedding_net,
    regression_net,
    tiny_gap_classifier,
)
from torch.nn import functional as F

from convlens import explain, explain_pair, similar_to
from convlens.errors import TargetError
from convlens.models.outputs import select_output
from convlens.targets import parse_target

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize(
    ("kind", "key"), [("dict", None), ("dataclass", None), ("tuple", 0), ("ambiguous", "scores")]
)
@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_structured_output_explains_the_picked_tensor(kind, key, method, images, unchanged):
    wrapped, plain = StructuredOutputNet(kind), tiny_gap_classifier()
    expected = explain(plain, images, method, target=3)
    with unchanged(wrapped, images):
        result = explain(wrapped, images, method, target=3, output_key=key)
    torch.testing.assert_close(result.maps, expected.maps)
    torch.testing.assert_close(result.scores, expected.scores)
    assert result.output.shape == (2, 5)
    assert not wrapped.net[0]._forward_hooks and not wrapped._forward_hooks


@pytest.mark.parametrize("kind", ["tuple", "ambiguous"])
def test_ambiguous_output_names_the_output_key(kind, images):
    with pytest.raises(TargetError, match="--output-key"):
        explain(StructuredOutputNet(kind), images, "saliency")


def test_output_key_errors_list_the_entries():
    output = {"logits": torch.zeros(1, 2), "name": "x"}
    with pytest.raises(TargetError, match="'logits', 'name'"):
        select_output(output, "logit")
    with pytest.raises(TargetError, match="not a tensor"):
        select_output(output, "name")
    assert select_output(output) is output["logits"]


@pytest.mark.parametrize("keep_dim", [False, True])
@pytest.mark.parametrize(
    ("method", "options"),
    [("saliency", {}), ("gradcam", {}), ("occlusion", {"patch": 8, "stride": 8})],
)
def test_regression_target_is_the_output(keep_dim, method, options, images, unchanged):
    model = regression_net(keep_dim)
    with torch.no_grad():
        values = model(images).reshape(-1)
    with unchanged(model, images):
        result = explain(model, images, method, **options)
    expected = explain(model, images, method, target=lambda out: out.reshape(-1), **options)
    torch.testing.assert_close(result.scores, values)
    torch.testing.assert_close(result.maps, expected.maps)
    assert result.class_ids is None and result.probabilities is None


def test_similarity_target_is_the_cosine_similarity(images, unchanged):
    model, reference = embedding_net(), torch.randn(3, 16, 16)
    with torch.no_grad():
        cosine = F.cosine_similarity(model(images), model(reference[None]))
    leaf = images.clone().requires_grad_(True)
    score = F.cosine_similarity(model(leaf), model(reference[None]).detach())
    (gradient,) = torch.autograd.grad(score.sum(), leaf)
    with unchanged(model, images, reference):
        result = explain(model, images, "saliency", target=similar_to(reference))
    torch.testing.assert_close(result.scores, cosine)
    torch.testing.assert_close(result.maps, gradient.abs().amax(1))
    assert result.target == "similar" and result.class_ids is None


def test_pair_maps_each_image_against_the_other(unchanged):
    model = embedding_net()
    first, second = torch.randn(3, 16, 16), torch.randn(3, 16, 16)
    with unchanged(model, first, second):
        pair = explain_pair(model, first, second, "gradcam")
    one = explain(model, first[None], "gradcam", target=similar_to(second))
    other = explain(model, second[None], "gradcam", target=similar_to(first))
    torch.testing.assert_close(pair.maps, torch.cat([one.maps, other.maps]))
    torch.testing.assert_close(pair.scores[0], pair.scores[1])


def test_similar_text_target_and_unresolved_refusal():
    target = parse_target("similar:ref.png")
    assert target == similar_to("ref.png")
    with pytest.raises(TargetError, match="PATH"):
        parse_target("similar:")
    with pytest.raises(Exception, match="load_model"):
        explain(embedding_net(), torch.zeros(1, 3, 16, 16), "saliency", target=target)
