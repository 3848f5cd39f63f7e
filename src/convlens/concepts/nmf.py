"""Non-negative matrix factorisation for concept discovery: ``A ~ U W`` with ``A``, ``U``,
``W`` non-negative, by hierarchical alternating least squares (HALS: Cichocki and Phan
2009), and the non-negative least-squares coefficients of new rows on a fixed ``W``.

HALS updates one row of ``W`` (a concept) at a time with the others fixed, then one column
of ``U``; each update is the exact minimiser of the squared error in that row or column
under the sign constraint, so the error never grows. Everything runs in float64 from a
seeded start, so one seed gives the same factors on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convlens.errors import DataError

DEFAULT_ITERATIONS = 500
DEFAULT_TOLERANCE = 1e-7
_TINY = 1e-12


@dataclass(frozen=True)
class Factorisation:
    """``coefficients`` ``Tensor[N, k]`` (``U``) and ``bank`` ``Tensor[k, C]`` (``W``, each
    row of unit L2 norm, or zero), both float64 and non-negative; ``error`` the relative
    error ``|A - U W|_F / |A|_F``; ``iterations`` the sweeps run."""

    coefficients: torch.Tensor
    bank: torch.Tensor
    error: float
    iterations: int


def _checked(activations: torch.Tensor) -> torch.Tensor:
    if activations.dim() != 2:
        raise DataError(f"NMF takes a matrix Tensor[N, C], got {tuple(activations.shape)}")
    matrix = activations.detach().double().cpu()
    if bool(torch.isnan(matrix).any()) or bool((matrix < 0).any()):
        raise DataError(
            "NMF needs non-negative activations without NaN; choose a layer after a ReLU"
        )
    return matrix


def _update_rows(rows: torch.Tensor, gram: torch.Tensor, target: torch.Tensor) -> None:
    """One HALS sweep, in place, over the rows ``j`` of ``rows`` (``Tensor[k, C]``):
    ``rows[j] <- max(0, rows[j] + (target[j] - gram[j] @ rows) / gram[j, j])`` for
    ``gram = X^T X`` and ``target = X^T A`` of the fixed factor ``X``."""
    for j in range(rows.shape[0]):
        step = (target[j] - gram[j] @ rows) / gram[j, j].clamp_min(_TINY)
        rows[j] = (rows[j] + step).clamp_min(0)


def _relative_error(matrix: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> float:
    norm = float(matrix.norm())
    return float((matrix - u @ w).norm()) / norm if norm > 0 else 0.0


def nmf(
    activations: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    iterations: int = DEFAULT_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Factorisation:
    """``activations ~ U W`` with ``k`` components (module docstring).

    Args:
        activations: ``Tensor[N, C]``, non-negative (`DataError` otherwise).
        k: the number of components (concepts), ``1 <= k <= min(N, C)``.
        seed: seeds the uniform random start (scaled to the mean of ``activations``).
        iterations: the most HALS sweeps (each updates all of ``W``, then all of ``U``).
        tolerance: stop when a sweep lowers the relative error by less than this.

    Returns a `Factorisation`; rows of ``W`` are scaled to unit norm (``U`` takes the
    scale), so coefficients of different concepts are on one scale.

    Example:
        >>> u = torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, 1]])
        >>> w = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
        >>> round(nmf(u @ w, 2).error, 6)
        0.0
    """
    matrix = _checked(activations)
    count, channels = matrix.shape
    if not 1 <= k <= min(count, channels):
        raise DataError(
            f"k = {k} concepts from a {count} x {channels} matrix: choose k between 1 and "
            f"{min(count, channels)} (more crops, or a layer with more channels)"
        )
    generator = torch.Generator().manual_seed(seed)
    scale = (matrix.mean() / k).sqrt()
    u = torch.rand(count, k, generator=generator, dtype=torch.float64) * scale
    w = torch.rand(k, channels, generator=generator, dtype=torch.float64) * scale
    error, sweeps = _relative_error(matrix, u, w), 0
    for sweeps in range(1, iterations + 1):  # noqa: B007  (the count is reported)
        _update_rows(w, u.T @ u, u.T @ matrix)
        u_t = u.T.contiguous()
        _update_rows(u_t, w @ w.T, w @ matrix.T)
        u = u_t.T.contiguous()
        previous, error = error, _relative_error(matrix, u, w)
        if previous - error < tolerance:
            break
    norms = w.norm(dim=1)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    return Factorisation(u * scale, w / scale[:, None], error, sweeps)


def nnls_coefficients(
    activations: torch.Tensor,
    bank: torch.Tensor,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    tolerance: float = 1e-9,
) -> torch.Tensor:
    """``Tensor[N, k]`` float64: for each row ``a`` of ``activations`` (``Tensor[N, C]``,
    non-negative) the ``u >= 0`` that minimises ``|a - u W|^2`` for the fixed ``bank``
    ``W`` (``Tensor[k, C]``): the NMF of ``activations`` with ``W`` held fixed. HALS
    sweeps over the columns of ``U`` from the clamped least-squares solution, until a
    sweep moves no coefficient by more than ``tolerance`` times the largest."""
    matrix = _checked(activations)
    w = bank.detach().double().cpu()
    if w.dim() != 2 or w.shape[1] != matrix.shape[1]:
        raise DataError(
            f"a bank Tensor[k, {matrix.shape[1]}] is needed for these activations, "
            f"got {tuple(w.shape)}"
        )
    gram, target = w @ w.T, w @ matrix.T
    u_t = torch.linalg.lstsq(gram, target).solution.clamp_min(0)
    for _ in range(iterations):
        before = u_t.clone()
        _update_rows(u_t, gram, target)
        if float((u_t - before).abs().max()) <= tolerance * max(float(u_t.max()), _TINY):
            break
    return u_t.T.contiguous()
