"""The top singular pair of a matrix given densely or as low-rank factors, by power iteration.

Pure tensor functions shared by Arrow routing (``compose/arrow.py``: an expert's prototype is
the top right singular vector of its ``B @ A``) and anything else that needs the leading
direction of an adapter's weight delta (the hub computes the same prototypes at upload).
"""

from __future__ import annotations

import torch

#: the power iteration stops once the unit vector moves less than this (Euclidean norm, in
#: float64) between two steps
TOLERANCE = 1e-12
MAX_ITERATIONS = 10_000


def _start(gram: torch.Tensor) -> torch.Tensor:
    """A deterministic start vector with a non-zero component along the top eigenvector of the
    PSD matrix ``gram``: its largest column (the diagonal entry ``G[j, j]`` is the column's
    energy), plus a small ramp so that no direction is exactly missed."""
    col = gram[:, int(torch.argmax(torch.diagonal(gram)))]
    ramp = torch.linspace(1.0, 2.0, gram.shape[0], dtype=gram.dtype, device=gram.device)
    v = col + 1e-3 * col.norm().clamp_min(1e-300) * ramp / ramp.norm()
    return v / v.norm().clamp_min(1e-300)


def power_iteration(gram: torch.Tensor, tol: float = TOLERANCE,
                    max_iterations: int = MAX_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Top eigenpair of a symmetric positive semi-definite ``gram``: (n, n), by power iteration
    in float64: ``(eigenvalue, unit eigenvector (n,), iterations used)``. A zero matrix gives
    eigenvalue 0 and the start vector."""
    g = gram.to(torch.float64)
    v = _start(g)
    steps = 0
    for steps in range(1, max_iterations + 1):
        w = g @ v
        norm = w.norm()
        if float(norm) == 0.0:
            return norm, v, steps
        w = w / norm
        moved = float((w - v).norm())  # a PSD matrix keeps the sign: no flip to undo
        v = w
        if moved < tol:
            break
    return v @ (g @ v), v, steps


def _canonical(v: torch.Tensor) -> torch.Tensor:
    """``v`` with the sign that makes its largest-magnitude entry positive."""
    return v if float(v[int(torch.argmax(v.abs()))]) >= 0 else -v


def top_right_singular(a: torch.Tensor, b: torch.Tensor | None = None,
                       tol: float = TOLERANCE) -> tuple[float, torch.Tensor]:
    """``(sigma_1, v_1)`` of ``M = b @ a`` (``a``: (r, in), ``b``: (out, r)), or of ``M = a``
    when ``b`` is None: the largest singular value and its right singular vector (in,), unit
    norm, float64, with its largest-magnitude entry positive.

    With factors, ``M^T M = a^T (b^T b) a`` is never formed: ``a^T = Q R`` (thin QR) reduces it
    to the (r, r) matrix ``K = R (b^T b) R^T``, whose top eigenvector ``u`` gives ``v_1 = Q u``
    and ``sigma_1^2``; the power iteration runs on ``K``."""
    a64 = a.detach().to(torch.float64)
    if b is None:
        if a64.shape[0] < a64.shape[1]:  # wide: M = I @ M, iterate on the (out, out) core
            return top_right_singular(a64, torch.eye(a64.shape[0], dtype=torch.float64), tol)
        value, v, _ = power_iteration(a64.t() @ a64, tol)
        return float(value.clamp_min(0).sqrt()), _canonical(v)
    b64 = b.detach().to(torch.float64)
    q, r = torch.linalg.qr(a64.t())  # (in, r), (r, r)
    k = r @ (b64.t() @ b64) @ r.t()
    value, u, _ = power_iteration(k, tol)
    v = q @ u
    return float(value.clamp_min(0).sqrt()), _canonical(v / v.norm().clamp_min(1e-300))
