"""convlens's TCAV equals Captum's (`captum.concept.TCAV`, optional test dependency) on the
same activations, CAVs and random sets.

Captum fits its CAVs with its own classifier (SGD on a random train/test split); to compare
the TCAV step itself, Captum is given a classifier that fits convlens's CAV (`fit_cav`) on the
activations Captum gathered. The scores agree when the two libraries read the same layer
activations, take the same class-score gradients and count the same signs. Tolerance: 0.01
(the issue's); with 24 images one differing sign would already move a score by 0.04.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.networks import small_convnet
from torch.utils.data import DataLoader

from convlens.concepts.tcav import fit_cav, t_test, tcav

captum_concept = pytest.importorskip("captum.concept")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

RUNS = 4
LAYER = "3"  # a conv output: the ReLU after it makes the gradients differ per image


class _ConvlensCav(captum_concept.Classifier):
    """Captum classifier whose weights are convlens's CAV: the concept with the smaller id is
    the positive set (the ids below are chosen so that it is always the tested concept)."""

    def __init__(self) -> None:
        self.cav = None
        self.ids = None

    def train_and_eval(self, dataloader, **kwargs):
        rows, labels = zip(*dataloader, strict=True)
        x, y = torch.cat(rows), torch.cat(labels)
        positive, negative = sorted(set(y.tolist()))
        self.ids = [positive, negative]
        self.cav = fit_cav(x[y == positive], x[y == negative])
        return {}

    def weights(self) -> torch.Tensor:
        return torch.stack([self.cav, -self.cav])

    def classes(self) -> list[int]:
        return self.ids


def _concept(concept_id: int, images: torch.Tensor):
    loader = DataLoader(images, batch_size=8)  # batches of images, as Captum's iterators
    return captum_concept.Concept(concept_id, f"set{concept_id}", loader)


def test_tcav_scores_equal_captums_on_the_same_cavs(unchanged, tmp_path):
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(76, 3, 8, 8, generator=generator)
    concept_images = noise[:12].clone()
    concept_images[:, 0] += 0.8  # reddish: a concept the CAV can find
    randoms = [noise[12 + 8 * j : 20 + 8 * j] for j in range(RUNS + 1)]
    tested = torch.rand(24, 3, 8, 8, generator=generator)
    model = small_convnet().eval()
    with unchanged(model, noise, tested):
        ours = tcav(model, concept_images, randoms, tested, 0, LAYER, runs=RUNS)[0]

    # ids: concept 0, random set j -> 100 - j, so the positive set has the smaller id both in
    # (concept, random i) and in (random i + 1, random i), the pairs convlens compares
    concept = _concept(0, concept_images)
    random_concepts = [_concept(100 - j, r) for j, r in enumerate(randoms)]
    pairs = [[concept, random_concepts[i]] for i in range(RUNS)]
    pairs += [[random_concepts[i + 1], random_concepts[i]] for i in range(RUNS)]
    captum = captum_concept.TCAV(
        model, [LAYER], classifier=_ConvlensCav(), save_path=str(tmp_path / "cav")
    )
    result = captum.interpret(tested, experimental_sets=pairs, target=0)
    theirs = [float(result[f"0-{100 - i}"][LAYER]["sign_count"][0]) for i in range(RUNS)]
    key = "{}-{}"
    baseline = [
        float(result[key.format(99 - i, 100 - i)][LAYER]["sign_count"][0]) for i in range(RUNS)
    ]

    assert ours.scores == pytest.approx(theirs, abs=0.01)
    assert ours.random_scores == pytest.approx(baseline, abs=0.01)
    # Captum leaves the t-test to the user (its tutorial: scipy's ttest_ind on these lists)
    assert ours.p_values["runs"] == pytest.approx(t_test(theirs, baseline), abs=1e-6)
    spread = ours.scores + ours.random_scores
    assert min(spread) < max(spread)  # not a degenerate case where every sign agrees
