"""Layer-wise relevance propagation: every rule's exact values on a hand-built two-layer
network, the canonizers (BatchNorm folding, residual sums, gates), conservation on the
architectures zennit cannot run, and equality with zennit where it can."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.networks import small_convnet
from torch import nn

import convlens
from convlens.attribution.common import prepare
from convlens.attribution.lrp import input_relevance, lrp
from convlens.errors import MethodError
from convlens.layers import input_gradient as input_gradient_module
from convlens.layers import relevance as relevance_module
from convlens.layers.relevance import Composite, relevance_rules
from convlens.layers.relevance_rules import LinearOp, Rule, propagate
from convlens.layers.tokens import register_reshape


def two_layers() -> nn.Module:
    """``y = [1, -0.5] . relu(W1 x)`` with ``W1 = [[1, 2], [3, -1]]``, no biases; ``x`` is
    an image ``Tensor[1, 2, 1, 1]``."""
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)
    )
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        net[3].weight.copy_(torch.tensor([[1.0, -0.5]]))
    return net.eval()


def first_layer_relevance(rule: Rule | str, x: list[float], bounds=None) -> torch.Tensor:
    """Input relevance of `two_layers` with ``rule`` on its first layer, epsilon on the top."""
    net = two_layers()
    images = torch.tensor([x]).view(1, 2, 1, 1)
    prepared = prepare(net, images, 0)
    composite = Composite({"first": rule, "linear": "epsilon"})
    relevance, _ = input_relevance(net, prepared.images, prepared.targets, composite, bounds)
    return relevance[0].flatten()


# x = [2, 1]: hidden z = [4, 5], y = 1.5; the top layer (epsilon) hands down R_h = [4, -2.5].
G = 0.25
GAMMA_S = (4 / 5, -2.5 / 6.5)  # G+ = W + G W+ = [[1.25, 2.5], [3.75, -1]], G+ x = [5, 6.5]
HAND = {
    # R_x = x * W^T (R_h / z), R_h / z = [1, -0.5]
    "epsilon": [2 * (1 - 1.5), 1 * (2 + 0.5)],
    "zero": [2 * (1 - 1.5), 1 * (2 + 0.5)],
    # W+ = [[1, 2], [3, 0]], W+ x = [4, 6]
    "zplus": [2 * (1 + 3 * (-2.5 / 6)), 1 * 2],
    "alpha1_beta0": [2 * (1 + 3 * (-2.5 / 6)), 1 * 2],
    # positive part as z-plus; W- x = [0, -1] takes R_h[1] = -2.5 to x2 through W-[1, 1] = -1
    "alpha2_beta1": [2 * 2 * (1 + 3 * (-2.5 / 6)), 2 * 2 - 1 * (1 * (-1) * (-2.5 / -1))],
    "gamma": [
        2 * (1.25 * GAMMA_S[0] + 3.75 * GAMMA_S[1]),
        1 * (2.5 * GAMMA_S[0] - 1 * GAMMA_S[1]),
    ],
    # ones for weights and inputs: z = [2, 2], each input gets 4/2 - 2.5/2
    "flat": [0.75, 0.75],
    # W^2 = [[1, 4], [9, 1]], z = [5, 10]
    "wsquare": [0.8 - 9 * 0.25, 4 * 0.8 - 0.25],
}


@pytest.mark.parametrize("rule", sorted(HAND))
def test_each_rule_gives_the_hand_computed_relevance(rule):
    relevance = first_layer_relevance(rule, [2.0, 1.0])
    torch.testing.assert_close(relevance, torch.tensor(HAND[rule]), atol=1e-5, rtol=1e-5)


def test_zbox_uses_the_bounds():
    # low = -1, high = 3: z = W x - W+ low - W- high = [7, 11]; s = [4/7, -2.5/11]
    bounds = (torch.tensor([[-1.0, -1.0]]), torch.tensor([[3.0, 3.0]]))
    relevance = first_layer_relevance("zbox", [2.0, 1.0], bounds)
    expected = torch.tensor([3 * (4 / 7 - 7.5 / 11), 16 / 7 - 5 / 11])
    torch.testing.assert_close(relevance, expected, atol=1e-5, rtol=1e-5)
    assert relevance.sum().item() == pytest.approx(1.5, abs=1e-5)


def test_zplus_sends_negative_inputs_through_negative_weights():
    # x = [2, -1]: z+ = W+ x+ + W- x- = [2, 7], R_h = [0, -3.5]
    relevance = first_layer_relevance("zplus", [2.0, -1.0])
    torch.testing.assert_close(relevance, torch.tensor([-3.0, -0.5]), atol=1e-5, rtol=1e-5)


def test_a_rule_parameter_changes_the_result():
    # gamma = 0 is the epsilon rule on positive inputs
    relevance = first_layer_relevance(Rule("gamma", gamma=0.0), [2.0, 1.0])
    torch.testing.assert_close(relevance, torch.tensor(HAND["epsilon"]), atol=1e-5, rtol=1e-5)


class ResidualGated(nn.Module):
    """conv -> BN -> relu_, a residual sum, an SE-style gate, SiLU, average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.branch = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.gate = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu_(self.bn(self.conv(x)))
        x = x + nn.functional.silu(self.branch(x))
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def residual_gated() -> nn.Module:
    torch.manual_seed(0)
    net = ResidualGated()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 2.0)
    return net.eval()


def test_relevance_is_conserved_through_bn_residual_gate_and_pooling(unchanged):
    net = residual_gated()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with unchanged(net, images):
        maps = lrp(net, images, [0, 3], composite="epsilon")
    logits = net(images)[[0, 1], [0, 3]]
    torch.testing.assert_close(maps.sum((1, 2)), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("negative_scales", [False, True])
def test_batchnorm_is_folded_into_the_convolution(negative_scales):
    # z-plus on the folded weights differs from z-plus on the raw ones: compare with a
    # network whose convolution already holds the folded weights (a negative BatchNorm
    # scale turns negative weights into positive ones: W+ of the fold is not W+ folded)
    net = residual_gated()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.3, 0.3)
        net.bn.bias.uniform_(-0.2, 0.2)
        if negative_scales:
            net.bn.weight[::2] *= -1
    folded = residual_gated()
    bn = net.bn
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    folded.conv = nn.Conv2d(3, 6, 3, padding=1)
    with torch.no_grad():
        folded.conv.weight.copy_(net.conv.weight * scale.view(-1, 1, 1, 1))
        folded.conv.bias.copy_(bn.bias - bn.running_mean * scale)
    folded.bn = nn.Identity()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(net(images), folded.eval()(images), rtol=1e-4, atol=1e-5)
    got = lrp(net, images, 1, composite="epsilon_plus_flat")
    want = lrp(folded, images, 1, composite="epsilon_plus_flat")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_composite_by_module_name_overrides_the_kind():
    net = two_layers()
    images = torch.tensor([[2.0, 1.0]]).view(1, 2, 1, 1)
    prepared = prepare(net, images, 0)
    composite = Composite({"1": "wsquare", "first": "flat", "linear": "epsilon"})
    relevance, _ = input_relevance(net, prepared.images, prepared.targets, composite)
    torch.testing.assert_close(
        relevance[0].flatten(), torch.tensor(HAND["wsquare"]), atol=1e-5, rtol=0
    )


def test_bad_composites_and_rules_are_refused():
    net = residual_gated()
    images = torch.randn(1, 3, 8, 8)
    with pytest.raises(MethodError, match="epsilon_plus_flat"):
        lrp(net, images, composite="no_such_composite")
    with pytest.raises(MethodError, match="convlens layers"):
        lrp(net, images, composite=Composite({"head.9": "flat"}))
    with pytest.raises(MethodError, match="gamma"):
        Rule("gama")
    with pytest.raises(MethodError, match="alpha - beta"):
        Rule("alpha_beta", alpha=3, beta=1)


class _SelfAdapting(nn.Module):
    """Takes one gradient of its own inside ``forward`` (a test-time adaptation step)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            (step,) = torch.autograd.grad(self.conv(x).square().mean(), self.conv.weight)
        h = nn.functional.conv2d(x, self.conv.weight - 0.1 * step, self.conv.bias)
        return self.fc(torch.relu(h).mean((2, 3)))


def test_a_gradient_inside_the_forward_pass_is_refused_by_name(unchanged):
    net, images = _SelfAdapting().eval(), torch.randn(2, 3, 8, 8)
    with unchanged(net, images), pytest.raises(MethodError, match="inside its forward pass"):
        lrp(net, images, 0)
    net(images)  # the model itself still runs


def test_lrp_runs_through_explain_with_a_composite_option():
    net = residual_gated()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    explanation = convlens.explain(net, images, method="lrp", target=2, composite="epsilon")
    direct = lrp(net, images, 2, composite="epsilon")
    assert explanation.maps.shape == (2, 8, 8)
    assert "lrp" in [m.name for m in convlens.list_methods()]
    assert direct.shape == (2, 8, 8)


def zero_biases(model: nn.Module, bn_scale: tuple[float, float]) -> nn.Module:
    """Biases and BatchNorm shifts zero (nothing absorbs relevance), BN scales drawn from
    ``bn_scale``: the epsilon rules then conserve relevance exactly up to epsilon."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
                module.bias.zero_()
                module.running_var.fill_(1.0)
                module.weight.uniform_(*bn_scale)
            elif isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.zero_()
    return model.eval()


def _efficientnet_lite0() -> nn.Module:
    from convlens.models.efficientnet_lite import load_efficientnet_lite

    return load_efficientnet_lite(0, pretrained=False).module


def _torchvision(name: str):
    def build() -> nn.Module:
        torchvision = pytest.importorskip("torchvision")
        return getattr(torchvision.models, name)(weights=None)

    return build


@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "bn_scale"),
    [
        (_efficientnet_lite0, (0.5, 1.5)),
        # hardswish shrinks small activations: larger BN scales keep the logits away from 0
        (_torchvision("mobilenet_v3_small"), (3.0, 3.0)),
        (_torchvision("densenet121"), (0.5, 1.5)),
    ],
    ids=["efficientnet_lite0", "mobilenet_v3_small", "densenet121"],
)
def test_epsilon_relevance_sums_to_the_logit(build, bn_scale, unchanged):
    torch.manual_seed(0)
    model = zero_biases(build(), bn_scale)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with unchanged(model, images):
        maps = lrp(model, images, "top1", composite="epsilon")
    logits = model(images).amax(dim=1)
    torch.testing.assert_close(maps.sum((1, 2)), logits, rtol=0.01, atol=0)


def _zennit_relevance(model, images, classes, composite_name, arch):
    composites = pytest.importorskip("zennit.composites")
    zennit_torchvision = pytest.importorskip("zennit.torchvision")
    from convlens.attribution.lrp import input_bounds

    canonizer = (
        zennit_torchvision.VGGCanonizer()
        if arch.startswith("vgg")
        else zennit_torchvision.ResNetCanonizer()
    )
    low, high = (b.expand(1, 3, *images.shape[2:]) for b in input_bounds(model))
    composite = {
        "epsilon_plus_flat": lambda: composites.EpsilonPlusFlat(canonizers=[canonizer]),
        "epsilon_alpha2_beta1_flat": lambda: composites.EpsilonAlpha2Beta1Flat(
            canonizers=[canonizer]
        ),
        "epsilon_gamma_box": lambda: composites.EpsilonGammaBox(
            low=low, high=high, canonizers=[canonizer]
        ),
    }[composite_name]()
    inputs = images.clone().requires_grad_(True)
    with composite.context(model) as modified:
        output = modified(inputs)
        seed = torch.zeros_like(output)
        seed[torch.arange(len(images)), classes] = 1
        (relevance,) = torch.autograd.grad(output, inputs, seed * output)
    return relevance.sum(dim=1)


def _narrow_vgg16_bn(torchvision) -> nn.Module:
    """vgg16_bn's feature stack (13 conv -> BN -> ReLU, 5 max pools) and average pool with
    a classifier of the same layers (linear, ReLU, dropout; 1000 classes) 64 wide instead
    of 4096: the rules meet the same kinds of layers, and the model has 16M parameters
    instead of 138M (whose initialisation, copies and rule weights cost seconds per test).
    Built on the meta device, then given PyTorch's default initialisation, seeded."""
    with torch.device("meta"):
        model = torchvision.models.vgg16_bn(weights=None)
        model.classifier = nn.Sequential(
            *[nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout()],
            *[nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 1000)],
        )
    model = model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


@pytest.fixture(scope="module")
def torchvision_net():
    """``torchvision_net(arch)``: the seeded torchvision ``arch`` (``vgg16_bn``: its narrow
    variant, `_narrow_vgg16_bn`) with random BatchNorm statistics, built once for the
    module; each test that uses it checks that it leaves the model unchanged."""
    torchvision = pytest.importorskip("torchvision")
    built: dict[str, nn.Module] = {}

    def get(arch: str) -> nn.Module:
        if arch not in built:
            torch.manual_seed(0)
            if arch == "vgg16_bn":
                model = _narrow_vgg16_bn(torchvision).eval()
            else:
                model = getattr(torchvision.models, arch)(weights=None).eval()
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, nn.BatchNorm2d):
                        module.running_mean.uniform_(-0.2, 0.2)
                        module.running_var.uniform_(0.5, 1.5)
                        module.weight.uniform_(0.5, 1.5)
                        module.bias.uniform_(-0.1, 0.1)
            built[arch] = model
        return built[arch]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16_bn", "resnet50"])
@pytest.mark.parametrize(
    "composite", ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box"]
)
def test_composites_equal_zennit(arch, composite, unchanged, torchvision_net):
    """Per-image Pearson >= 0.99 of the channel-summed relevance (the issue's bar); the two
    compute the same formulas in float32, so we also ask for 1e-3 relative agreement of the
    totals (zennit folds BatchNorm into the stored weights, we into separate tensors: the
    rounding differs)."""
    model = torchvision_net(arch)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    classes = [3, 7]
    with unchanged(model, images):
        ours = lrp(model, images, classes, composite=composite)
    theirs = _zennit_relevance(model, images, classes, composite, arch)
    for own, ref in zip(ours.flatten(1), theirs.flatten(1), strict=True):
        assert torch.corrcoef(torch.stack([own, ref]))[0, 1] >= 0.99
    torch.testing.assert_close(ours.sum((1, 2)), theirs.sum((1, 2)), rtol=1e-3, atol=1e-6)


def test_concept_relevance_over_all_channels_adds_up_to_the_lrp_map(unchanged):
    net = residual_gated()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with unchanged(net, images):
        concepts = convlens.concept_relevance(
            net, images, [1, 2], layer="bn", channels=range(6), composite="epsilon"
        )
    assert concepts.shape == (2, 6, 8, 8)
    whole = lrp(net, images, [1, 2], composite="epsilon")
    torch.testing.assert_close(concepts.sum(dim=1), whole, rtol=1e-4, atol=1e-6)
    # each concept is its own share: the channels do not all carry the same relevance
    totals = concepts.sum((2, 3))
    assert not torch.allclose(totals[:, 0], totals[:, 1])


def test_concept_relevance_refuses_a_channel_the_layer_lacks():
    net = residual_gated()
    with pytest.raises(MethodError, match="6 channels"):
        convlens.concept_relevance(net, torch.randn(1, 3, 8, 8), 0, layer="bn", channels=[6])


def test_the_command_line_option_chooses_the_composite():
    from convlens.cli.options import parse_method_options

    assert parse_method_options(["composite=epsilon_gamma_box"], ["lrp"]) == {
        "lrp": {"composite": "epsilon_gamma_box"}
    }


def test_the_relevance_at_a_layer_is_what_the_layers_above_hand_down(unchanged):
    net = two_layers()
    images = torch.tensor([[2.0, 1.0]]).view(1, 2, 1, 1)
    with unchanged(net, images):
        maps, extras = lrp(net, images, 0, composite="epsilon", relevance_layer="2")
    # the top layer (epsilon) hands R_h = [4, -2.5] to the ReLU's output (see HAND)
    torch.testing.assert_close(extras["channel_relevance"], torch.tensor([[4.0, -2.5]]))
    torch.testing.assert_close(maps, lrp(net, images, 0, composite="epsilon"), rtol=0, atol=0)


def test_the_relevance_at_a_layer_with_a_registered_reshape(unchanged):
    # reading the layer's grid takes a gradient inside the forward pass (convlens's own,
    # through no rule); the input relevance stays plain LRP's, the layer's comes in its grid
    net = small_convnet().eval()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    _, plain = lrp(net, images, 0, composite="epsilon", relevance_layer="2")
    register_reshape(net[2], lambda output: output.flip(1))
    try:
        with unchanged(net, images):
            maps, extras = lrp(net, images, 0, composite="epsilon", relevance_layer="2")
    finally:
        register_reshape(net[2], None)
    # (the captured layer's output reaches the layers above as a copy: rounding)
    plain_maps = lrp(net, images, 0, composite="epsilon")
    torch.testing.assert_close(maps, plain_maps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(extras["channel_relevance"], plain["channel_relevance"].flip(1))


class _ParameterGradient(nn.Module):
    """Takes, inside ``forward``, a gradient of its parameters alone (not of the input) and
    uses it as a constant scale; ``scale`` given: the same scale, no gradient taken."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(15)
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
        self.log_scale = nn.Parameter(torch.randn(4))
        self.scale: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale
        if scale is None:
            with torch.enable_grad():
                p = self.log_scale.detach().requires_grad_(True)
                (scale,) = torch.autograd.grad(p.exp().sum(), p)
        return self.fc((torch.relu(self.conv(x)) * scale.view(1, -1, 1, 1)).mean((2, 3)))


def test_a_gradient_inside_the_forward_pass_through_no_rule_is_allowed():
    net, images = _ParameterGradient().eval(), torch.randn(2, 3, 8, 8)
    taken = lrp(net, images, 0, composite="epsilon")
    net.scale = net.log_scale.detach().exp()
    torch.testing.assert_close(taken, lrp(net, images, 0, composite="epsilon"), rtol=0, atol=0)


# --- the cheaper forms of the flat rule, the residual split and the rectified-input check


def _conv_op(stride: int, padding: int, groups: int, weight: torch.Tensor) -> LinearOp:
    def apply(x, w, b):
        return nn.functional.conv2d(x, w, b, stride, padding, 1, groups)

    def transpose(s, x, w):
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(apply(leaf, w, None), leaf, s)
        return grad

    return LinearOp(apply, transpose, weight, None)


def _flat_by_definition(op: LinearOp, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    ones_w, ones_x = torch.ones_like(op.weight), torch.ones_like(x)
    z = op.apply(ones_x, ones_w, None)
    return op.transpose(relevance / (z + 1e-6), ones_x, ones_w)


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 3, 1), (2, 1, 2)])
def test_flat_rule_equals_its_definition_at_the_borders_and_per_row(stride, padding, groups):
    # the fast form sums the output relevance over channels and broadcasts one row of
    # counts; at padded borders the counts differ by position, and a grouped layer must
    # not be summed across groups
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 9, 9, generator=gen)
    op = _conv_op(stride, padding, groups, torch.randn(6, 4 // groups, 5, 5, generator=gen))
    relevance = torch.randn_like(op.apply(x, op.weight, None))
    got = propagate(Rule("flat"), op, x, None, relevance)
    torch.testing.assert_close(got, _flat_by_definition(op, x, relevance), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0], got[1])  # each row its own relevance


def test_flat_rule_on_a_linear_layer_of_a_sequence_is_not_summed_over_positions():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 3, generator=gen)  # [N, positions, features]
    weight = torch.randn(4, 3, generator=gen)
    op = LinearOp(
        lambda x, w, b: nn.functional.linear(x, w, b), lambda s, x, w: s @ w, weight, None
    )
    relevance = torch.randn(2, 3, 4, generator=gen)
    got = propagate(Rule("flat"), op, x, None, relevance)
    # each of the 3 inputs of a position gets that position's relevance sum / 3
    want = (relevance.sum(-1, keepdim=True) / (3 + 1e-6)).expand(2, 3, 3)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("inplace", [False, True])
def test_a_residual_sum_splits_relevance_by_contribution(inplace):
    # R_a = a R / stab(a + b), stab(z) = z + 1e-6 sign(z) with sign(0) = +1; a retained
    # graph gives the same split twice (the saved terms are not overwritten)
    a = torch.tensor([[1.0, -3.0, 2.0, 0.0]], requires_grad=True)
    b = torch.tensor([[3.0, 1.0, -2.0, 0.0]], requires_grad=True)
    relevance = torch.tensor([[2.0, 4.0, 1.0, 5.0]])
    with relevance_rules(nn.Identity(), "epsilon"):
        total = a.clone().add_(b) if inplace else a + b
    z = torch.tensor([4.0, -2.0, 0.0, 0.0])
    stab = z + 1e-6 * torch.where(z >= 0, 1.0, -1.0)
    for _ in range(2):
        r_a, r_b = torch.autograd.grad(total, (a, b), relevance, retain_graph=True)
        torch.testing.assert_close(r_a[0], a.detach()[0] * relevance[0] / stab)
        torch.testing.assert_close(r_b[0], b.detach()[0] * relevance[0] / stab)
    assert r_a[0, 2].item() == pytest.approx(2.0 * 1.0 / 1e-6)  # a + b = 0: stab = +1e-6


class _Rectified(nn.Module):
    """An activation, then ``after`` (``"none"``; ``"shift_"``: ``- 1`` in place;
    ``"shift"``: ``- 1`` out of place; ``"copy"``: ``* 1``), then a convolution."""

    def __init__(self, activation: nn.Module, after: str) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.activation, self.after = activation, after
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(x)
        if self.after == "shift_":
            x = x.sub_(1.0)
        elif self.after == "shift":
            x = x * 1.0 - 1.0
        elif self.after == "copy":
            x = x * 1.0  # a new tensor: never taken for a rectifier's output
        return self.fc(self.conv(x).mean((2, 3)))


class _ViewShifted(nn.Module):
    """relu, max pooling, then ``- 2`` in place on a view of one channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(x), 2)
        x[:, 0].sub_(2.0)
        return x


class _PositionalHardtanh(nn.Module):
    """``F.hardtanh(x, -1.0, 1.0, True)``: bounds given by position, in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.hardtanh(x * 1.0, -1.0, 1.0, True)


ACTIVATIONS = {
    "relu_": lambda: nn.ReLU(inplace=True),
    "relu6": nn.ReLU6,
    "hardtanh": nn.Hardtanh,
    "hardtanh01": lambda: nn.Hardtanh(0.0, 1.0),
    "view_shifted": _ViewShifted,
    "positional_hardtanh": _PositionalHardtanh,
}


@pytest.mark.parametrize(
    "activation,after,reference",
    [
        ("relu_", "shift_", "shift"),  # changed in place after the rectifier
        ("relu6", "shift_", "shift"),
        ("hardtanh", "none", "copy"),  # outputs down to -1
        ("relu_", "none", "copy"),  # rectified: skipping the (zero) negative part is exact
        ("hardtanh01", "none", "copy"),
        ("view_shifted", "none", "copy"),  # a view changed in place after max pooling
        ("positional_hardtanh", "none", "copy"),
    ],
)
def test_the_negative_part_is_skipped_only_for_inputs_known_nonnegative(
    activation, after, reference
):
    # z-plus keeps its negative-input terms wherever the input may be negative: the same
    # relevance as for the same values made by an operation that is never trusted
    images = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(6)) * 3
    composite = Composite({"conv": "zplus", "linear": "epsilon"})
    make = ACTIVATIONS[activation]
    got = lrp(_Rectified(make(), after).eval(), images, 1, composite=composite)
    want = lrp(_Rectified(make(), reference).eval(), images, 1, composite=composite)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class _Pointwise(nn.Module):
    """1x1 convolutions (with and without bias, BatchNorm folded), a 3x3 one between."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.a = nn.Conv2d(3, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.a(x)))
        x = torch.relu(self.c(torch.relu(self.b(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat"])
def test_1x1_layers_as_matrix_products_give_the_convolutions_relevance(composite, monkeypatch):
    # on the CPU the rule terms of a large 1x1 convolution run as matrix products
    # (`PRODUCT_PIXELS`); forced on and off they give the same relevance
    net = _Pointwise()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.3, 0.3)
        net.bn.running_var.uniform_(0.5, 2.0)
    images = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(9))
    monkeypatch.setattr(input_gradient_module, "PRODUCT_PIXELS", 10**9)
    by_convolution = lrp(net.eval(), images, 1, composite=composite)
    monkeypatch.setattr(input_gradient_module, "PRODUCT_PIXELS", 1)
    by_product = lrp(net.eval(), images, 1, composite=composite)
    torch.testing.assert_close(by_product, by_convolution, rtol=1e-4, atol=1e-6)
    assert by_product.abs().sum() > 0


class _Downsampling(nn.Module):
    """A ResNet-like block whose shortcut is a strided 1x1 convolution, on an odd-sized map
    with unequal strides (the last rows and columns are never read)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.main = nn.Conv2d(6, 8, 3, stride=(2, 3), padding=1)
        self.shortcut = nn.Conv2d(6, 8, 1, stride=(2, 3))
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.main(x) + self.bn(self.shortcut(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    "composite", ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box", "epsilon"]
)
def test_strided_1x1_layers_as_placed_products_give_the_convolutions_relevance(
    composite, monkeypatch
):
    # on the CPU a strided 1x1 layer's transposed terms are a matrix product placed every
    # stride-th row and column of a zero map; oneDNN's transposed convolution gives the same
    net = _Downsampling().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.3, 0.3)
        net.bn.running_var.uniform_(0.5, 2.0)
    images = torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(9))
    by_product = lrp(net, images, 1, composite=composite)
    monkeypatch.setattr(relevance_module, "pointwise_transpose", lambda *args: None)
    by_convolution = lrp(net, images, 1, composite=composite)
    torch.testing.assert_close(by_product, by_convolution, rtol=1e-4, atol=1e-6)
    assert by_product.abs().sum() > 0


@pytest.mark.parametrize("method", ["lrp", "saliency"])
def test_an_empty_batch_through_strided_1x1_layers(method):
    # the matrix products spell out their channel count: nothing to infer -1 from
    empty = torch.randn(0, 3, 11, 13)
    assert convlens.explain(_Downsampling().eval(), empty, method, target=1).maps.shape == (
        0,
        11,
        13,
    )


class _PerVector(nn.Module):
    """A linear layer applied to one vector at a time (``Tensor[F]`` inputs)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.fc(v) for v in self.conv(x).mean((2, 3))])


@pytest.mark.parametrize("rule", ["flat", "wsquare"])
def test_flat_and_wsquare_on_a_linear_layer_of_single_vectors(rule):
    # no row dimension to compute the counts on once: each vector is its own row
    net = _PerVector().eval()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    composite = Composite({"linear": rule, "conv": "epsilon"})
    got = lrp(net, images, 1, composite=composite)
    per_image = [lrp(net, images[i : i + 1], 1, composite=composite)[0] for i in range(2)]
    torch.testing.assert_close(got, torch.stack(per_image), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(got).all() and got.abs().sum() > 0


def test_concept_relevance_on_a_token_layer_conditions_on_its_channel_axis(unchanged):
    # tokens [B, prefix + h*w, C]: a channel is the last axis (of every token), not axis 1
    from tests.layers.test_tokens import TinyTokens

    net = TinyTokens().eval()
    images = torch.randn(2, 3, 12, 8, generator=torch.Generator().manual_seed(6))
    with unchanged(net, images):
        concepts = convlens.concept_relevance(
            net, images, 1, layer="block", channels=range(5), composite="epsilon"
        )
    assert concepts.shape == (2, 5, 12, 8)
    whole = lrp(net, images, 1, composite="epsilon")
    torch.testing.assert_close(concepts.sum(dim=1), whole, rtol=1e-4, atol=1e-6)
    with pytest.raises(MethodError, match="5 channels"):
        convlens.concept_relevance(net, images, 1, layer="block", channels=[5])
