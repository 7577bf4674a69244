"""Low-rank factor pairs and the truncated-SVD helpers shared by ``combine`` and ``extract``.

Conventions (nn.Linear): ``A`` is (r, in_features), ``B`` is (out_features, r) and the weight
delta is ``scale * B @ A`` with shape (out_features, in_features).

Truncation follows the Eckart-Young theorem: keeping the ``k`` largest singular values gives the
best rank-``k`` approximation in Frobenius norm, and the squared error equals the sum of the
discarded squared singular values. The energy criterion (smallest rank whose kept share of
``sum(sigma^2)`` reaches a threshold) is the one used by PHLoRA-style post-hoc extraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SvdMethod = Literal["auto", "qr", "dense"]

# Relative slack when comparing a cumulative energy share with a threshold, so that a share that
# equals the threshold mathematically is not rejected because of float rounding.
_ENERGY_RTOL = 1e-6


@dataclass(frozen=True, eq=False)
class LoRAFactors:
    """One site's LoRA factors: ``delta() == scale * B @ A``.

    A rank-0 pair (``A`` of shape (0, in), ``B`` of shape (out, 0)) is valid and its delta is
    the zero matrix; ``extract`` returns it for a zero weight difference.
    """

    A: Tensor
    B: Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2:
            raise ValueError(
                f"LoRAFactors needs 2-D A and B, got A{tuple(self.A.shape)} B{tuple(self.B.shape)}"
            )
        if self.A.shape[0] != self.B.shape[1]:
            raise ValueError(
                f"LoRAFactors rank mismatch: A{tuple(self.A.shape)} has rank {self.A.shape[0]}, "
                f"B{tuple(self.B.shape)} has rank {self.B.shape[1]}"
            )

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])

    @property
    def num_params(self) -> int:
        return self.A.numel() + self.B.numel()

    def delta(self) -> Tensor:
        """The (out_features, in_features) weight delta ``scale * B @ A`` (zeros at rank 0)."""
        return self.scale * (self.B @ self.A)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype is computed in float32 (SVD/QR need it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def svd_of_product(
    B: Tensor, A: Tensor, method: SvdMethod = "auto"
) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``U, S, Vh`` of ``M = B @ A`` with B (out, R) and A (R, in).

    ``"dense"`` forms M and decomposes it. ``"qr"`` never forms M: with ``B = Qb Rb`` and
    ``A^T = Qa Ra``, ``M = Qb (Rb Ra^T) Qa^T``, so the SVD ``Rb Ra^T = U' S V'^T`` of a matrix of
    at most R x R gives ``U = Qb U'`` and ``V = Qa V'``. ``"auto"`` picks ``"qr"`` when
    ``2 * R <= min(out, in)``. ``"qr"`` returns ``min(out, in, R)`` singular values and
    ``"dense"`` ``min(out, in)``; the nonzero ones agree.
    """
    out_f, rank_sum = B.shape
    in_f = A.shape[1]
    if method == "auto":
        method = "qr" if 2 * rank_sum <= min(out_f, in_f) else "dense"
    if method == "dense":
        return torch.linalg.svd(B @ A, full_matrices=False)
    if method != "qr":
        raise ValueError(f"unknown SVD method {method!r}; use 'auto', 'qr' or 'dense'")
    qb, rb = torch.linalg.qr(B)  # qb (out, kb), rb (kb, R), kb = min(out, R)
    qa, ra = torch.linalg.qr(A.T)  # qa (in, ka), ra (ka, R), ka = min(in, R)
    u_small, s, vh_small = torch.linalg.svd(rb @ ra.T, full_matrices=False)  # core (kb, ka)
    return qb @ u_small, s, vh_small @ qa.T


def choose_rank(s: Tensor, rank: int | None = None, energy: float | None = None) -> int:
    """How many of the descending singular values ``s`` to keep.

    ``rank`` wins when given (clipped to ``len(s)``). Otherwise ``energy`` picks the smallest
    ``k`` with ``sum(s[:k]^2) >= energy * sum(s^2)`` (a zero spectrum gives 0). With neither,
    every singular value is kept (the exact factorisation).
    """
    n = int(s.numel())
    if rank is not None:
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        return min(rank, n)
    if energy is None:
        return n
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    sq = s.double() ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 0
    share = torch.cumsum(sq, 0) / total  # (n,) nondecreasing, last entry 1
    reached = torch.nonzero(share >= energy * (1.0 - _ENERGY_RTOL))
    return int(reached[0, 0]) + 1 if reached.numel() else n


def retained_energy(s: Tensor, k: int) -> float:
    """``sum(s[:k]^2) / sum(s^2)``; 1.0 for an all-zero spectrum (nothing can be lost)."""
    sq = s.double() ** 2
    total = float(sq.sum())
    return 1.0 if total == 0.0 else float(sq[:k].sum()) / total


def factors_from_svd(
    u: Tensor, s: Tensor, vh: Tensor, k: int, dtype: torch.dtype | None = None
) -> LoRAFactors:
    """Rank-``k`` factors with ``sqrt(sigma)`` split evenly: ``B = U_k sqrt(S_k)``,
    ``A = sqrt(S_k) Vh_k``, scale 1.0."""
    root = s[:k].sqrt()  # (k,)
    b = u[:, :k] * root  # (out, k): column j scaled by sqrt(sigma_j)
    a = root[:, None] * vh[:k]  # (k, in): row j scaled by sqrt(sigma_j)
    if dtype is not None:
        a, b = a.to(dtype), b.to(dtype)
    return LoRAFactors(A=a.contiguous(), B=b.contiguous(), scale=1.0)


def truncated_factors(
    u: Tensor,
    s: Tensor,
    vh: Tensor,
    rank: int | None = None,
    energy: float | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[LoRAFactors, float]:
    """``choose_rank`` + ``factors_from_svd``; returns the factors and the retained energy."""
    k = choose_rank(s, rank, energy)
    return factors_from_svd(u, s, vh, k, dtype), retained_energy(s, k)
