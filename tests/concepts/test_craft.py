"""CRAFT: the NMF recovers a planted factorisation and is deterministic, the Sobol estimator
gives known indices, a hand-built network whose class reads one concept ranks that concept
first, concept maps have their shapes, and the CLI writes its JSON and page."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from convlens.cli import main
from convlens.concepts.craft import (
    concept_maps,
    craft,
    jansen_total_indices,
    sobol_design,
)
from convlens.concepts.nmf import nmf, nnls_coefficients
from convlens.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``U [40, 3]`` and ``W [3, 12]``, non-negative, each row of ``W`` with channels of its
    own (so the factorisation is unique up to order and scale), and 5 pure rows per part."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.rand(3, 12, generator=generator, dtype=torch.float64) + 0.1
    for j in range(3):
        w[j, 4 * ((j + 1) % 3) : 4 * ((j + 1) % 3) + 2] = 0  # a channel pair it lacks
    u = torch.rand(40, 3, generator=generator, dtype=torch.float64)
    u[:15] = 0
    for j in range(3):
        u[5 * j : 5 * j + 5, j] = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
    return u, w


def test_nmf_recovers_a_planted_factorisation_and_is_deterministic():
    u, w = _planted()
    found = nmf(u @ w, 3, seed=0, iterations=200, tolerance=0)
    assert found.error < 1e-4
    assert bool((found.bank >= 0).all()) and bool((found.coefficients >= 0).all())
    planted = w / w.norm(dim=1, keepdim=True)
    cosines = found.bank @ planted.T  # unit rows: a permutation of ~1 entries
    assert sorted(cosines.max(1).values.tolist()) == pytest.approx([1.0] * 3, abs=1e-4)
    assert sorted(cosines.argmax(1).tolist()) == [0, 1, 2]
    again = nmf(u @ w, 3, seed=0, iterations=200, tolerance=0)
    assert torch.equal(found.bank, again.bank)
    assert torch.equal(found.coefficients, again.coefficients)
    assert not torch.equal(nmf(u @ w, 3, seed=1, iterations=5).bank, found.bank)


def test_nnls_coefficients_on_a_fixed_bank_are_exact_and_refuse_negative_input():
    u, w = _planted(1)
    coefficients = nnls_coefficients(u @ w, w)
    assert torch.allclose(coefficients, u, atol=1e-6)
    with pytest.raises(DataError, match="ReLU"):
        nnls_coefficients(-(u @ w), w)


def test_jansen_total_indices_of_an_additive_function():
    """``f(m) = 3 m_0 + m_1`` (``m_2`` unused): total indices 0.9, 0.1, 0 (variances 9:1)."""
    masks, designs = sobol_design(3, 256, seed=0)
    scores = 3 * masks[:, 0] + masks[:, 1]
    indices = jansen_total_indices(scores, 3, designs)
    assert indices[2] == 0
    assert indices[0] == pytest.approx(0.9, abs=0.05)
    assert indices[1] == pytest.approx(0.1, abs=0.02)


def _red_reader() -> nn.Module:
    """conv 1x1 (red, green, blue channels as they are), ReLU (layer ``"1"``), GAP, a head
    whose class 0 reads red only and class 1 green only."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    head = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        head.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def _red_green_images() -> torch.Tensor:
    """6 black images 16x16, each with a red 5x5 square and a green one apart from it."""
    images = torch.zeros(6, 3, 16, 16)
    for i in range(6):
        images[i, 0, i : i + 5, 1:6] = 1.0
        images[i, 1, 10 - i : 15 - i, 10:15] = 1.0
    return images


@pytest.mark.parametrize("importance", ["sobol", "occlusion"])
def test_the_concept_a_class_reads_ranks_first(importance, unchanged):
    model, images = _red_reader(), _red_green_images()
    with unchanged(model, images):
        settings = {"concepts": 2, "crop": 0.4, "crops_per_image": 6, "designs": 32}
        result = craft(model, images, 0, "1", importance=importance, **settings)
    red = torch.tensor([1.0, 0, 0])
    assert float(result.bank[0] @ red) > 0.99  # concept 0: the red direction
    assert float(result.bank[1] @ red) < 0.05
    if importance == "sobol":
        assert float(result.importance[0]) == pytest.approx(1.0, abs=0.1)
    else:  # removing red everywhere drops the logit by the red share of the image
        assert float(result.importance[0]) == pytest.approx(25 / 256, abs=1e-5)
    assert abs(float(result.importance[1])) < 0.02 * float(result.importance[0])
    best = result.coefficients[result.best[0], 0]
    assert torch.equal(best, best.sort(descending=True).values)
    record = result.record()
    assert [c["id"] for c in record["concepts"]] == [0, 1]
    assert record["concepts"][0]["best_crops"][0]["source"].startswith("tensor:")


def test_concept_maps_have_the_input_size_and_find_the_red_square(unchanged):
    model, images = _red_reader(), _red_green_images()
    result = craft(model, images, 0, "1", concepts=2, crop=0.4, crops_per_image=4, designs=4)
    with unchanged(model, images):
        maps = concept_maps(model, images[:3], result)
        small = concept_maps(model, images[:3], result, upsample=False)
    assert maps.shape == (3, 2, 16, 16) and small.shape == (3, 2, 16, 16)
    assert bool((maps >= 0).all())
    red = images[:3, 0] > 0
    assert torch.equal(small[:, 0] > 0.5, red)  # 1x1 layer: one position per pixel


def test_a_signed_layer_is_refused():
    model, images = _red_reader(), _red_green_images()
    with pytest.raises(DataError, match="ReLU"):
        craft(model, images - 0.5, 0, "0", concepts=2, crops_per_image=2, designs=2)


def test_the_cli_writes_concepts_json_and_a_self_contained_page(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["concepts", "scenes:6@circle", "--class", "circle", "--layer", "features.16"]
    argv += ["--model", "synthetic-scenes", "--k", "2", "--crops", "2", "--designs", "2"]
    argv += ["--examples", "2", "--best", "3", "--out", str(out), "--json"]
    assert main(argv) == 0
    record = json.loads((out / "concepts.json").read_text())
    assert json.loads(capsys.readouterr().out) == record
    assert record["class"] == "circle" and record["layer"] == "features.16"
    assert len(record["concepts"]) == 2 and record["importance_method"] == "sobol"
    crop = record["concepts"][0]["best_crops"][0]
    assert crop["source"].startswith("scenes:") and len(crop["box"]) == 4
    assert len(record["maps_on"]) == 2
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # crops and maps of 2 concepts
    assert "http://" not in page and "https://" not in page
