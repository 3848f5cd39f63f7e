"""Layer-wise relevance propagation rules for one linear layer (Bach et al. 2015; Montavon
et al. 2019).

A linear layer ``z = op(x, W, b)`` (a convolution, a fully connected layer, or an average
pooling whose weights are implicit) hands the relevance ``R`` of its outputs ``Tensor[N,
...]`` down to its inputs. Every rule below is a ratio: with the transposed layer
``T(s, V) = d<op(x, V), s>/dx`` (what autograd computes for the input gradient) and the
stabiliser ``stab(z) = z + eps * sign(z)`` (``sign(0) = +1``),

- epsilon / zero: ``R_in = x * T(R / stab(z), W)`` (zero: ``eps = 0``, ``0/0 = 0``);
- z-plus (alpha1-beta0): ``x+ * T(s, W+) + x- * T(s, W-)``, ``s = R / stab(op(x+, W+, b+) +
  op(x-, W-))`` (``x+ = max(x, 0)``, ``W+ = max(W, 0)``, likewise the negative parts);
- alpha-beta: ``alpha * (x+ T(s_p, W+) + x- T(s_p, W-)) - beta * (x+ T(s_n, W-) + x- T(s_n,
  W+))`` with ``s_p = R / stab(z_p)``, ``z_p = op(x+, W+, b+) + op(x-, W-)`` and
  ``z_n = op(x+, W-, b-) + op(x-, W+)``;
- gamma: the weights ``W + gamma W+`` for the positive part of the contributions where the
  output is positive (and ``W + gamma W-`` where it is negative), negative inputs taking the
  mirrored weights, as in the generalised rule of Andeol et al. 2021;
- flat: ``T(R / stab(op(1, 1)), 1)`` (all weights and inputs one, no bias);
- w-square: ``T(R / stab(op(1, W^2)), W^2)`` (no bias);
- z^B (bounded input ``low <= x <= high``): ``x T(s, W) - low T(s, W+) - high T(s, W-)``,
  ``s = R / stab(op(x, W) - op(low, W+) - op(high, W-))``.

`Rule` names a rule and its parameters; `propagate` applies one to a layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from convlens.errors import MethodError

# rule name -> its parameters with their defaults
RULE_PARAMETERS: dict[str, dict[str, float]] = {
    "epsilon": {"epsilon": 1e-6},
    "zero": {},
    "zplus": {"stabilizer": 1e-6},
    "alpha2_beta1": {"stabilizer": 1e-6},
    "alpha1_beta0": {"stabilizer": 1e-6},
    "alpha_beta": {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6},
    "gamma": {"gamma": 0.25, "stabilizer": 1e-6},
    "flat": {"stabilizer": 1e-6},
    "wsquare": {"stabilizer": 1e-6},
    "zbox": {"stabilizer": 1e-6},
}
RULE_NAMES = tuple(RULE_PARAMETERS)


@dataclass(frozen=True)
class Rule:
    """An LRP rule by name with its parameters: ``Rule("gamma", gamma=0.5)``,
    ``Rule("epsilon", epsilon=0.01)``, ``Rule("alpha_beta", alpha=3, beta=2)``. Names:
    `RULE_NAMES`. ``zbox`` takes its bounds from the model's preprocessing."""

    name: str
    params: dict[str, float] = field(default_factory=dict)

    def __init__(self, name: str, **params: float) -> None:
        if name not in RULE_PARAMETERS:
            raise MethodError(f"unknown LRP rule {name!r}; use one of {', '.join(RULE_NAMES)}")
        unknown = set(params) - set(RULE_PARAMETERS[name])
        if unknown:
            allowed = ", ".join(RULE_PARAMETERS[name]) or "none"
            raise MethodError(
                f"LRP rule {name!r} takes no parameter {', '.join(sorted(unknown))}; "
                f"its parameters: {allowed}"
            )
        merged = RULE_PARAMETERS[name] | {k: float(v) for k, v in params.items()}
        if name == "alpha_beta" and merged["alpha"] - merged["beta"] != 1:
            raise MethodError("the alpha-beta rule needs alpha - beta = 1 (e.g. alpha=2, beta=1)")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", merged)

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params.items()))))


def as_rule(rule: Rule | str) -> Rule:
    """A `Rule` from a rule or its name."""
    return rule if isinstance(rule, Rule) else Rule(rule)


@dataclass(frozen=True)
class LinearOp:
    """One evaluated linear layer: ``apply(x, weight, bias)`` recomputes it with other
    weights, ``transpose(s, x, weight)`` is ``T(s, weight)``. Its weight is ``stored``
    (None for pooling), times ``scale`` per output channel where a BatchNorm was folded in:
    made when a rule first asks for it, so a rule that needs only its positive part
    (z-plus) never holds the folded weight itself."""

    apply: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
    transpose: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    stored: torch.Tensor | None
    bias: torch.Tensor | None
    scale: torch.Tensor | None = None

    @cached_property
    def weight(self) -> torch.Tensor | None:
        """The layer's weight (folded BatchNorm included); None for pooling."""
        if self.stored is None or self.scale is None:
            return self.stored
        return self.stored * self._scale_per_output()

    def positive_weight(self) -> torch.Tensor:
        """``max(weight, 0)``, in one new tensor."""
        return self._part_of_weight().clamp_(min=0)

    def negative_weight(self) -> torch.Tensor:
        """``min(weight, 0)``, in one new tensor."""
        return self._part_of_weight().clamp_(max=0)

    def _part_of_weight(self) -> torch.Tensor:
        """A new tensor holding the weight, to be clamped in place."""
        if self.scale is None or "weight" in self.__dict__:
            return self.weight.clone()
        return self.stored * self._scale_per_output()

    def _scale_per_output(self) -> torch.Tensor:
        return self.scale.view((-1,) + (1,) * (self.stored.dim() - 1))


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (a new tensor): never zero for
    ``epsilon > 0``. A negative zero counts as negative (``copysign``): it comes only from
    terms that are all zero, whose shares of relevance are zero either way. One allocation:
    on the CPU a fresh large tensor costs about as much as the arithmetic that fills it."""
    return torch.copysign(z.new_tensor(epsilon), z).add_(z)


def _divide(relevance: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``relevance / stab(z)`` (``z`` may broadcast); ``0 / 0 = 0`` for ``epsilon = 0``."""
    if epsilon > 0:
        stabilized = stabilize(z, epsilon)
        if stabilized.shape != relevance.shape:
            return relevance / stabilized
        return torch.div(relevance, stabilized, out=stabilized)
    return torch.where(z == 0, torch.zeros_like(relevance), relevance / z)


def needs_output(rule: Rule, op: LinearOp) -> bool:
    """Whether `propagate` reads the layer output ``z`` for ``rule`` (epsilon-type rules and
    pooling divide by it, gamma gates by its sign); the other rules recompute what they need."""
    return rule.name in ("epsilon", "zero", "gamma") or op.stored is None


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


def propagate(
    rule: Rule,
    op: LinearOp,
    x: torch.Tensor,
    z: torch.Tensor | None,
    relevance: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    nonnegative: bool = False,
) -> torch.Tensor:
    """Relevance ``Tensor`` shaped like ``x`` from the output relevance ``relevance`` (shaped
    like the layer output ``z``) under ``rule`` (see the module docstring). ``z`` may be None
    where `needs_output` is false. ``bounds``: ``(low, high)`` broadcastable to ``x``, for
    z^B. ``nonnegative``: ``x`` is known to hold no negative value (a rectifier's output),
    so the alpha-beta rules skip the check for a negative part."""
    p, name = rule.params, rule.name
    if name in ("epsilon", "zero"):
        return op.transpose(_divide(relevance, z, p.get("epsilon", 0.0)), x, op.weight).mul_(x)
    if op.stored is None:  # pooling: only epsilon-type rules apply to fixed weights
        return op.transpose(_divide(relevance, z, 1e-6), x, None).mul_(x)
    if name in ("zplus", "alpha1_beta0"):
        return _alpha_beta(op, x, relevance, 1.0, 0.0, p["stabilizer"], nonnegative)
    if name == "alpha2_beta1":
        return _alpha_beta(op, x, relevance, 2.0, 1.0, p["stabilizer"], nonnegative)
    if name == "alpha_beta":
        return _alpha_beta(op, x, relevance, p["alpha"], p["beta"], p["stabilizer"], nonnegative)
    if name == "gamma":
        return _gamma(op, x, z, relevance, p["gamma"], p["stabilizer"])
    if name == "flat":
        return _flat(op, x, relevance, p["stabilizer"])
    if name == "wsquare":
        weight = op.weight.square()
        s = _divide(relevance, op.apply(_one_row(x), weight, None), p["stabilizer"])
        return op.transpose(s, x, weight)
    if name == "zbox":
        return _zbox(op, x, relevance, bounds, p["stabilizer"])
    raise MethodError(f"unknown LRP rule {name!r}")


def _alpha_beta(
    op: LinearOp,
    x: torch.Tensor,
    relevance: torch.Tensor,
    alpha: float,
    beta: float,
    eps: float,
    nonnegative: bool,
) -> torch.Tensor:
    # Inputs after a rectifier have no negative part: skip its (zero) terms.
    has_negative = not nonnegative and (bool(x.amin() < 0) if x.numel() else False)
    xp, xn = (x.clamp(min=0), x.clamp(max=0)) if has_negative else (x, None)
    both = alpha != 1 or beta != 0
    wp = op.positive_weight()
    wn = op.negative_weight() if has_negative or both else None

    def part(w_pos_in, w_neg_in, bias, positive: bool) -> torch.Tensor:  # noqa: ANN001
        # The positive part's terms are all >= 0 (x+ W+, x- W-, b+), so z >= 0 and
        # stab(z) = z + eps: the layer adds eps with its bias, and z is divided in place.
        shifted = positive and eps > 0
        z = op.apply(xp, w_pos_in, _plus_epsilon(bias, w_pos_in, eps) if shifted else bias)
        if has_negative:
            z = z.add_(op.apply(xn, w_neg_in, None))
        s = torch.div(relevance, z, out=z) if shifted else _divide(relevance, z, eps)
        out = op.transpose(s, xp, w_pos_in).mul_(xp)
        if has_negative:
            out = out.add_(op.transpose(s, xn, w_neg_in).mul_(xn))
        return out

    result = part(wp, wn, _pos(op.bias), True)
    if both:
        result = alpha * result - beta * part(wn, wp, _neg(op.bias), False)
    return result


def _one_row(x: torch.Tensor) -> torch.Tensor:
    """Ones shaped like one row of ``x``: the input of a rule whose denominator does not
    depend on the input (flat, w-square), computed once and broadcast over the rows; all of
    ``x`` where it has no row dimension (a linear layer applied to one vector)."""
    return x.new_ones((1,) + x.shape[1:]) if x.dim() > 1 else torch.ones_like(x)


def _flat(op: LinearOp, x: torch.Tensor, relevance: torch.Tensor, eps: float) -> torch.Tensor:
    """The flat rule. With every weight one and no grouping, each output channel counts the
    same input terms (``op(1, 1)`` is equal across output channels), so the output relevance
    is summed over channels first and goes down through a one-channel layer of ones: the
    same values as ``T(R / stab(op(1, 1)), 1)``, without a full-size layer of ones."""
    weight = op.stored  # only its shape: every weight of the flat rule is one
    channels_first = x.dim() == weight.dim() and weight.dim() in (2, 4)  # conv2d or linear
    if not channels_first or weight.shape[1] != x.shape[1]:  # grouped: channels differ
        ones = torch.ones_like(weight)
        return op.transpose(_divide(relevance, op.apply(_one_row(x), ones, None), eps), x, ones)
    ones = weight.new_ones((1,) + weight.shape[1:])
    counts = op.apply(_one_row(x), ones, None)
    return op.transpose(_divide(relevance.sum(1, keepdim=True), counts, eps), x, ones)


def _plus_epsilon(bias: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``bias + eps`` per output (``eps`` alone without a bias)."""
    return weight.new_full(weight.shape[:1], eps) if bias is None else bias + eps


def _gamma(
    op: LinearOp,
    x: torch.Tensor,
    z: torch.Tensor,
    relevance: torch.Tensor,
    gamma: float,
    eps: float,
) -> torch.Tensor:
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    w, b = op.weight, op.bias
    up_w, down_w = w + gamma * op.positive_weight(), w + gamma * op.negative_weight()
    up_b = None if b is None else b + gamma * _pos(b)
    down_b = None if b is None else b + gamma * _neg(b)

    def part(w_pos_in, w_neg_in, bias, gate):
        total = op.apply(xp, w_pos_in, bias) + op.apply(xn, w_neg_in, None)
        s = gate * _divide(relevance, total, eps)
        return xp * op.transpose(s, xp, w_pos_in) + xn * op.transpose(s, xn, w_neg_in)

    positive = part(up_w, down_w, up_b, (z > 0).to(z.dtype))
    negative = part(down_w, up_w, down_b, (z < 0).to(z.dtype))
    return positive + negative


def _zbox(
    op: LinearOp,
    x: torch.Tensor,
    relevance: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
    eps: float,
) -> torch.Tensor:
    if bounds is None:
        raise MethodError("the z^B rule needs input bounds (the model's preprocessing)")
    low, high = (bound.to(x).expand_as(x) for bound in bounds)
    wp, wn = op.positive_weight(), op.negative_weight()
    z = op.apply(x, op.weight, None) - op.apply(low, wp, None) - op.apply(high, wn, None)
    s = _divide(relevance, z, eps)
    return (
        x * op.transpose(s, x, op.weight)
        - low * op.transpose(s, low, wp)
        - high * op.transpose(s, high, wn)
    )
