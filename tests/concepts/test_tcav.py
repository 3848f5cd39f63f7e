"""TCAV on a hand-built net whose class 0 reads only the red channel: a red concept is
significant for class 0, a random one is not; the CAV fit, the Crawford-Howell test and the
CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import optimize
from torch import nn

from convlens.cli import main
from convlens.concepts.tcav import TESTS, crawford_howell, fit_cav, tcav
from convlens.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _red_reader() -> nn.Module:
    """conv 1x1 (channel 0 = red, channel 1 = green), ReLU ("1"), GAP, identity head."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 1] = 1.0
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def test_a_planted_concept_is_significant_and_a_random_one_is_not(unchanged):
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(60, 3, 6, 6, generator=generator)
    red = noise[:10].clone()
    red[:, 0] += 1.0  # red above the noise everywhere
    model = _red_reader()
    with unchanged(model, noise):
        planted = tcav(model, red, noise[10:], noise[:10], 0, "1", runs=10)
        random = tcav(model, noise[:10], noise[10:], noise[:10], 0, "1", runs=10)
    assert planted[0].score == 1.0 and planted[0].significant
    assert planted[0].p_value < 0.01
    assert not random[0].significant


@pytest.mark.parametrize(("features", "examples"), [(40, 12), (6, 30)])
def test_fit_cav_is_the_normal_of_the_regularised_logistic_minimum(features, examples):
    """Newton's method (in the examples' span when features outnumber examples) reaches the
    minimum scipy's L-BFGS-B finds in the full weight space (analytic gradient)."""
    l2 = 0.1
    generator = torch.Generator().manual_seed(1)
    positive = torch.randn(examples, features, generator=generator) + 0.3
    negative = torch.randn(examples, features, generator=generator)
    x = torch.cat([positive, negative]).double().numpy()
    x = x / x.std()
    y = np.r_[np.ones(examples), np.zeros(examples)]

    def loss_and_gradient(theta):
        w, b = theta[:-1], theta[-1]
        z = x @ w + b
        p = 1 / (1 + np.exp(-z))
        loss = np.mean(np.logaddexp(0, z) - y * z) + l2 / 2 * w @ w
        return loss, np.r_[x.T @ (p - y) / len(y) + l2 * w, np.mean(p - y)]

    found = optimize.minimize(
        loss_and_gradient,
        np.zeros(features + 1),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000},
    )
    expected = torch.from_numpy(found.x[:-1] / np.linalg.norm(found.x[:-1])).float()
    assert torch.dot(fit_cav(positive, negative, l2), expected) > 1 - 1e-6


def test_crawford_howell_against_a_hand_computed_case():
    """Controls (-1, 1): mean 0, sd sqrt(2), so t = x / sqrt(3) with 1 degree of freedom
    (Cauchy): at x = sqrt(3), t = 1 and p = 1 - 2/pi * atan(1) = 0.5."""
    assert crawford_howell(math.sqrt(3), [-1.0, 1.0]) == pytest.approx(0.5, abs=1e-12)
    assert crawford_howell(-math.sqrt(3), [-1.0, 1.0]) == pytest.approx(0.5, abs=1e-12)
    assert crawford_howell(2.0, [2.0, 2.0]) == 1.0
    assert crawford_howell(1.0, [2.0, 2.0]) == 0.0


def test_every_test_is_reported_and_the_chosen_one_decides(tmp_path):
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(40, 3, 6, 6, generator=generator)
    red = noise[:8].clone()
    red[:, 0] += 1.0
    results = {
        test: tcav(_red_reader(), red, noise[8:], noise[:8], 0, "1", runs=3, test=test)[0]
        for test in TESTS
    }
    for test, result in results.items():
        assert set(result.p_values) == set(TESTS)
        assert result.p_value == result.p_values[test] and result.test == test
        assert result.p_values == results["cosine"].p_values  # same fits, same seed
    assert len(results["runs"].null_cosines) == 4 and results["runs"].cosine > 0.5
    with pytest.raises(DataError, match="cosine, score, runs"):
        tcav(_red_reader(), red, noise[8:], noise[:8], 0, "1", runs=3, test="anova")
    for alpha in (3.0, 0.0, -0.1):  # a p-value is always below 3: everything "significant"
        with pytest.raises(DataError, match=r"alpha is a significance level in \(0, 1\)"):
            tcav(_red_reader(), red, noise[8:], noise[:8], 0, "1", runs=3, alpha=alpha)


def test_cli_prints_each_layer_and_refuses_an_unknown_test(capsys):
    args = [
        "tcav",
        "--concept",
        "shapes:6@circle",
        "--random",
        "shapes:24",
        "--class",
        "circle",
        "--layer",
        "features.15",
        "--data",
        "shapes:6@circle",
        "--model",
        "synthetic-shapes",
        "--runs",
        "2",
    ]
    assert main([*args, "--json", "--test", "score"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["test"] == "score" and record["p_value"] == record["p_values"]["score"]
    assert main([*args, "--test", "anova"]) == 2
    assert "--test" in capsys.readouterr().err
