"""CAM family: exact values on hand-built nets, equivalences, batching, hygiene, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers.networks import hand_net
from torch import nn

import convlens
from convlens.attribution import cam as cams
from convlens.errors import LayerError, TargetError
from convlens.maps import normalize_maps
from convlens.targets import contrast

ALL_CAMS = [
    "cam",
    "gradcam",
    "gradcam_pp",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigencam",
    "scorecam",
    "guided_gradcam",
]


HAND_X = torch.tensor([[1.0, 2.0], [3.0, -4.0]]).view(1, 1, 2, 2)


class GapNet(nn.Module):
    """conv -> BN -> functional relu -> conv -> inplace ReLU module -> GAP -> dropout ->
    linear. ``act2`` is the layer CAM reads (its output is what the GAP averages)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.act2 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(5, classes)

    def forward(self, x):
        x = self.act2(self.conv2(F.relu(self.bn(self.conv1(x)))))
        return self.head(self.drop(x.mean((2, 3))))


class ConvHead(nn.Module):
    """A model whose head is not GAP + linear: flatten + linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def run(method: str, model, images, target=None, **options):
    return getattr(cams, method)(model, images, target, **options)


@pytest.fixture
def gap_net():
    torch.manual_seed(1)
    net = GapNet().eval()
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture
def batch():
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def test_exact_values_on_hand_built_net():
    class0 = {
        "cam": [[2.0, 4.0], [6.0, 4.0]],  # W[0] . A = 2 A_0 + A_1
        "gradcam": [[0.5, 1.0], [1.5, 1.0]],  # (W[0] / 4) . A
        "hirescam": [[0.5, 1.0], [1.5, 1.0]],
        "xgradcam": [[0.5, 1.0], [1.5, 1.0]],
        "layercam": [[0.5, 1.0], [1.5, 1.0]],
        # alpha_0 = 0.25 / (0.5 + 6 * 0.125) = 0.2 -> w_0 = 4 * 0.2 * 0.5 = 0.4;
        # alpha_1 = 0.0625 / (0.125 + 4 * 0.25^3) = 1/3 -> w_1 = 4 / 3 * 0.25 = 1/3.
        "gradcam_pp": [[0.4, 0.8], [1.2, 4 / 3]],
    }
    class1 = {  # W[1] = (-1, 3): only A_1's cell survives the ReLU
        "cam": [[0.0, 0.0], [0.0, 12.0]],
        "gradcam": [[0.0, 0.0], [0.0, 3.0]],
        "layercam": [[0.0, 0.0], [0.0, 3.0]],  # ReLU(-1/4) = 0, 3/4 * 4
    }
    net = hand_net()
    for method, expected in class0.items():
        got = run(method, net, HAND_X, layer="1")
        assert torch.allclose(got[0], torch.tensor(expected)), method
    for method, expected in class1.items():
        got = run(method, net, HAND_X, 1, layer="1")
        assert torch.allclose(got[0], torch.tensor(expected)), method


def test_contrastive_gradcam_uses_score_difference():
    # y_0 - y_1 has dy/dA = (W[0] - W[1]) / 4 = (3/4, -1/2): 0.75 A_0 - 0.5 A_1.
    got = cams.gradcam(hand_net(), HAND_X, contrast(0, 1), layer="1")
    assert torch.allclose(got[0], torch.tensor([[0.75, 1.5], [2.25, 0.0]]))
    got_cam = cams.cam(hand_net(), HAND_X, contrast(0, 1), layer="1")
    assert torch.allclose(got_cam[0], 4 * got[0])


def test_gradcam_equals_cam_up_to_positive_factor_on_exact_gap_model(batch):
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    ).eval()
    grad = cams.gradcam(net, batch, [0, 1, 3], layer="1")
    plain = cams.cam(net, batch, [0, 1, 3], layer="1")
    # 8 x 8 positions: w_k = W[c, k] / 64, so CAM = 64 * Grad-CAM exactly.
    assert torch.allclose(plain, 64 * grad, atol=1e-5)
    assert float(grad.amax()) > 0


def test_gap_variants_agree_when_gradient_is_spatially_constant(batch):
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    net.append(nn.Linear(5, 3))
    reference = cams.gradcam(net, batch, layer="1")
    for method in ("hirescam", "xgradcam"):
        assert torch.allclose(run(method, net, batch, layer="1"), reference, atol=1e-6), method


@pytest.mark.parametrize("method", ALL_CAMS)
def test_batch_equals_single_images(method, gap_net, batch):
    options = {"layer": "act2"}
    together = run(method, gap_net, batch, [0, 2, 3], **options)
    for i, target in enumerate([0, 2, 3]):
        alone = run(method, gap_net, batch[i : i + 1], target, **options)
        assert torch.allclose(together[i], alone[0], atol=1e-5), (method, i)


def test_scorecam_batch_size_never_changes_results(gap_net, batch):
    reference = cams.scorecam(gap_net, batch, "top2", layer="act2", batch_size=1000)
    for size in (1, 3, 7):
        got = cams.scorecam(gap_net, batch, "top2", layer="act2", batch_size=size)
        assert torch.allclose(got, reference, atol=1e-6), size
    assert float(reference.amax()) > 0


def test_scorecam_forwards_only_non_zero_channels(gap_net, batch):
    with torch.no_grad():
        gap_net.conv2.bias[1] = -100.0  # channel 1 of act2 is all zero
    with torch.no_grad():
        active = int(
            (gap_net.act2(gap_net.conv2(F.relu(gap_net.bn(gap_net.conv1(batch[:1]))))) != 0)
            .flatten(2)
            .any(2)
            .sum()
        )
    rows = []
    handle = gap_net.register_forward_pre_hook(lambda _m, args: rows.append(len(args[0])))
    try:
        maps = cams.scorecam(gap_net, batch[:1], 0, layer="act2", batch_size=1000)
    finally:
        handle.remove()
    # one forward for the activation, then one batch with a masked copy per live channel
    assert active <= 4 and rows == [1, active]
    assert float(maps.amax()) > 0


def test_guided_gradcam_is_guided_backprop_times_gradcam(gap_net, batch):
    from convlens.attribution.rules import guided_backprop

    got = cams.guided_gradcam(gap_net, batch, "top1", layer="act2")
    expected = guided_backprop(gap_net, batch, "top1") * cams.gradcam(
        gap_net, batch, "top1", layer="act2"
    )
    assert torch.allclose(got, expected, atol=1e-7)
    assert float(got.amax()) > 0


def test_eigencam_exact_on_hand_built_net():
    # Positions x channels: (1, 0), (2, 0), (3, 0), (0, 4); centred, projected on the top
    # eigenvector of the scatter matrix; sign such that the map follows the total activation.
    positions = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    centred = positions - positions.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    projection = centred @ vectors[:, -1]
    total = positions.sum(1)
    if float(projection @ (total - total.mean())) < 0:
        projection = -projection
    expected = projection.clamp_min(0).view(2, 2).float()
    got = cams.eigencam(hand_net(), HAND_X, layer="1")[0]
    assert torch.allclose(got, expected, atol=1e-5)
    assert float(got[1, 1]) > 3  # the cell with the odd channel stands out


def test_eigencam_is_class_agnostic(gap_net, batch):
    first = cams.eigencam(gap_net, batch, 0, layer="act2")
    assert torch.equal(first, cams.eigencam(gap_net, batch, 3, layer="act2"))


@pytest.mark.parametrize("method", ALL_CAMS)
def test_model_and_inputs_unchanged_after_success(method, gap_net, batch, unchanged):
    images = batch.clone().requires_grad_(True)
    gap_net.train()
    with unchanged(gap_net, images):
        run(method, gap_net, images, layer="act2")
    assert gap_net.training and gap_net.bn.training


@pytest.mark.parametrize("method", ALL_CAMS)
def test_model_unchanged_after_exception(method, gap_net, batch, unchanged):
    gap_net.train()
    with unchanged(gap_net, batch):
        with pytest.raises(TargetError):
            run(method, gap_net, batch, 99, layer="act2")
    assert gap_net.training


def test_train_mode_model_explained_in_eval_mode(gap_net, batch):
    expected = cams.gradcam(gap_net, batch, layer="act2")
    gap_net.train()
    assert torch.allclose(cams.gradcam(gap_net, batch, layer="act2"), expected, atol=1e-6)
    assert gap_net.training and gap_net.drop.training


def test_frozen_parameters_work(gap_net, batch, unchanged):
    expected = {m: run(m, gap_net, batch, layer="act2") for m in ("gradcam", "guided_gradcam")}
    for p in gap_net.parameters():
        p.requires_grad_(False)
    with unchanged(gap_net, batch):
        for method, reference in expected.items():
            assert torch.allclose(run(method, gap_net, batch, layer="act2"), reference)


@pytest.mark.parametrize("method", ALL_CAMS)
def test_non_spatial_layer_raises(method, gap_net, batch):
    with pytest.raises(LayerError, match="spatial"):
        run(method, gap_net, batch, layer="head")


def test_cam_refuses_models_without_gap_linear_head(batch):
    with pytest.raises(LayerError, match="gradcam"):
        cams.cam(ConvHead(), batch, layer="conv")
    # the same model works with Grad-CAM; and CAM on GapNet refuses a pre-ReLU layer
    assert cams.gradcam(ConvHead(), batch, layer="conv").shape == (3, 8, 8)
    with pytest.raises(LayerError, match="GAP"):
        cams.cam(GapNet(), batch, layer="conv2")


def test_cam_refuses_callable_target(gap_net, batch):
    with pytest.raises(TargetError, match="gradcam"):
        cams.cam(gap_net, batch, lambda out: out[:, 0], layer="act2")


def test_constant_activation_normalises_to_zeros():
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.append(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(1.0)
    images = torch.randn(2, 3, 4, 4)
    for method in ALL_CAMS:
        maps = run(method, net, images, layer="1")
        normalised = normalize_maps(maps)
        assert not torch.isnan(normalised).any(), method
        assert torch.equal(normalised, torch.zeros_like(normalised)), method


def test_default_model_cam_is_49_times_gradcam(default_model):
    # bn2 (BN + ReLU6) feeds the global pool and classifier directly, 7 x 7 positions.
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    grad = cams.gradcam(default_model, images, [281, 5], layer="bn2")
    plain = cams.cam(default_model, images, [281, 5], layer="bn2")
    assert torch.allclose(plain, 49 * grad, atol=1e-4 * float(plain.amax()))


@pytest.mark.parametrize("corner", [(0, 0), (112, 112)])
def test_default_model_gradcam_finds_the_cat(default_model, corner):
    """The cat photo shrunk into one quadrant of a grey (0 after normalisation) canvas: the
    Grad-CAM of the top class (a cat) puts most of its mass and its peak on that quadrant."""
    from convlens import load_images

    cat = load_images(["cat"], preprocess=default_model.preprocess).tensor
    small = F.interpolate(cat, size=(112, 112), mode="bilinear", antialias=True)
    top, left = corner
    canvas = torch.zeros(1, 3, 224, 224)
    canvas[:, :, top : top + 112, left : left + 112] = small
    maps = cams.gradcam(default_model, canvas)
    assert maps.shape == (1, 224, 224)
    inside = maps[0, top : top + 112, left : left + 112].sum() / maps[0].sum()
    assert float(inside) > 0.5  # the quadrant is a quarter of the picture
    row, col = divmod(int(maps[0].argmax()), 224)
    assert top <= row < top + 112 and left <= col < left + 112


# ---- each variant's formula, on a hand-made activation and gradient ----------------------
# A and G vary over positions (unlike a GAP head's constant gradient), so the variants differ.
A_HAND = torch.tensor([[[1.0, 0.0], [1.0, 2.0]], [[0.0, 3.0], [1.0, 0.0]]])[None]
G_HAND = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[0.5, 2.0], [-1.0, 1.0]]])[None]


def _gradcam_pp_weight(a_sum: float, gradients: list[float]) -> float:
    """Grad-CAM++ channel weight by hand: sum_ij alpha_ij relu(g_ij)."""
    total = 0.0
    for g in gradients:
        denominator = 2 * g**2 + a_sum * g**3
        alpha = g**2 / denominator if denominator != 0 else 0.0
        total += alpha * max(g, 0.0)
    return total


@pytest.mark.parametrize(
    "combine, expected",
    [
        # w = mean G = (0.5, 0.625): 0.5 A0 + 0.625 A1
        ("gradcam", [[0.5, 1.875], [1.125, 1.0]]),
        # sum_k G_k A_k: [[1, 0], [2, 0]] + [[0, 6], [-1, 0]]
        ("hirescam", [[1.0, 6.0], [1.0, 0.0]]),
        # sum_k relu(G_k) A_k: the -1 gradient at (1, 0) is dropped
        ("layercam", [[1.0, 6.0], [2.0, 0.0]]),
        # w_k = sum(A G) / sum(A) = (3/4, 5/4)
        ("xgradcam", [[0.75, 3.75], [2.0, 1.5]]),
    ],
)
def test_variant_formulas_exact(combine, expected):
    got = getattr(cams, f"weigh_{combine}")(A_HAND, G_HAND).sum(dim=1)
    assert torch.allclose(got[0], torch.tensor(expected), atol=1e-6)


def test_gradcam_pp_formula_exact():
    w0 = _gradcam_pp_weight(4.0, [1.0, -1.0, 2.0, 0.0])  # 1/6 + 0.1 * 2
    w1 = _gradcam_pp_weight(4.0, [0.5, 2.0, -1.0, 1.0])  # 0.25 * 0.5 + 0.1 * 2 + 1/6
    assert w0 == pytest.approx(1 / 6 + 0.2) and w1 == pytest.approx(0.125 + 0.2 + 1 / 6)
    expected = w0 * A_HAND[0, 0] + w1 * A_HAND[0, 1]
    got = cams.weigh_gradcam_pp(A_HAND, G_HAND).sum(dim=1)
    assert torch.allclose(got[0], expected, atol=1e-6)


def test_scorecam_exact_on_tiny_net():
    """Identity 1x1 conv, so A equals the input; one channel is constant (weight 0)."""
    net = nn.Sequential(
        nn.Conv2d(2, 2, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        net[3].weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, 1.0]]))
    x = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])[None]
    got = cams.scorecam(net, x, 0, layer="0")
    mask = torch.tensor([[0.0, 0.25], [0.5, 1.0]])  # (A0 - 0) / (4 - 0)
    masked_gap = (x[0] * mask).mean(dim=(1, 2))  # both channels masked by M_0
    logits = torch.tensor([[2.0, 1.0], [-1.0, 1.0]]) @ masked_gap
    w0 = torch.softmax(logits, 0)[0]
    assert torch.allclose(got[0], w0 * x[0, 0], atol=1e-6)  # w1 = 0: channel 1 is flat


class _SideBranch(nn.Module):
    """A layer whose output feeds only a side computation (a value the forward pass
    computes and throws away), not the logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(14)
        self.conv, self.side, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        self.last_side = self.side(h).mean()
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize(
    "images", [torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8, 8).repeat(2, 1, 1, 1)]
)
def test_a_layer_off_the_path_to_the_output_is_refused_by_name(images, unchanged):
    # distinct rows and rows of one image (the shared forward pass) alike
    net = _SideBranch().eval()
    with unchanged(net, images), pytest.raises(LayerError, match="'side'.*convlens layers"):
        convlens.explain(net, images, method="gradcam", target=[0, 1], layer="side")
    assert convlens.explain(
        net, images, method="gradcam", target=[0, 1], layer="conv"
    ).maps.shape == (2, 8, 8)
