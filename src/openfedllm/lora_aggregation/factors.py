"""Sums of LoRA products kept in factored form, never as a dense d_out x d_in matrix per client.

A LoRA module adds s * B @ A to a frozen weight W (B: d_out x r, A: r x d_in, s = alpha / r).
The clients' weighted sum  sum_i w_i s_i B_i A_i  equals one product U @ V of the stacked factors
U = [w_1 s_1 B_1, ..., w_N s_N B_N] (d_out x R) and V = [A_1; ...; A_N] (R x d_in), R = sum r_i.
Every method of this package works on such stacks: its Frobenius norm from two R x R Gram
matrices, its best rank-k approximation from two thin QRs and the SVD of an R x R matrix.
Computed in float64: "exact" below means to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..algorithms import StateDict

A_PART, B_PART = ".lora_A.", ".lora_B."  # how peft's state dict names a module's two factors


@dataclass(frozen=True)
class Module:
    """One adapted linear layer: its name and the keys of its factors in the shared state."""

    name: str  # e.g. base_model.model.model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str

    @property
    def kind(self) -> str:
        """The layer type the aggregation error is reported by (q_proj, v_proj, ...)."""
        return self.name.rsplit(".", 1)[-1]


def modules(keys) -> list[Module]:
    """The LoRA modules named by a state's keys (A and B together), in name order."""
    found = []
    for key in sorted(keys):
        if A_PART in key:
            name = key.split(A_PART)[0]
            b_key = key.replace(A_PART, B_PART)
            found.append(Module(name, key, b_key))
    return found


@dataclass
class Stack:
    """U @ V as stacked factors: U (d_out x R), V (R x d_in), float64."""

    u: torch.Tensor
    v: torch.Tensor

    @classmethod
    def of(cls, terms: list[tuple[float, torch.Tensor, torch.Tensor]]) -> Stack:
        """sum_k c_k * B_k @ A_k from (c_k, B_k, A_k) terms (any ranks)."""
        u = torch.cat([c * b.to(torch.float64) for c, b, _ in terms], dim=1)
        v = torch.cat([a.to(torch.float64) for _, _, a in terms], dim=0)
        return cls(u, v)

    def plus(self, other: Stack) -> Stack:
        return Stack(torch.cat([self.u, other.u], dim=1), torch.cat([self.v, other.v], dim=0))

    def minus(self, other: Stack) -> Stack:
        return self.plus(Stack(-other.u, other.v))

    def norm_squared(self) -> float:
        """||U V||_F^2 = sum((U^T U) * (V V^T)): R x R matrices only."""
        return float(((self.u.T @ self.u) * (self.v @ self.v.T)).sum().clamp(min=0))

    def dense(self) -> torch.Tensor:
        return self.u @ self.v  # (d_out, d_in)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P, sigma, Q^T) with U V = P diag(sigma) Q^T, singular values descending; P: d_out x R,
        Q^T: R x d_in. Through thin QRs U = Q_u R_u and V^T = Q_v R_v: U V = Q_u (R_u R_v^T) Q_v^T,
        so only the R x R matrix R_u R_v^T is decomposed."""
        q_u, r_u = torch.linalg.qr(self.u)
        q_v, r_v = torch.linalg.qr(self.v.T)
        p, sigma, qt = torch.linalg.svd(r_u @ r_v.T)
        return q_u @ p, sigma, qt @ q_v.T

    def factors(self, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) of rank `rank` with scale * B @ A the best rank-`rank` approximation of U V
        (Eckart-Young); the singular values are split evenly between B and A. Zero-padded where
        U V has lower rank than `rank`."""
        p, sigma, qt = self.svd()
        k = min(rank, sigma.numel())
        root = (sigma[:k] / scale).sqrt()
        b = torch.zeros(p.shape[0], rank, dtype=torch.float64)
        a = torch.zeros(rank, qt.shape[1], dtype=torch.float64)
        b[:, :k] = p[:, :k] * root
        a[:k] = root[:, None] * qt[:k]
        return b, a


def relative_error(target: Stack, result: Stack) -> tuple[float, float]:
    """(||target - result||_F^2, ||target||_F^2): summed over modules, then divided."""
    return target.minus(result).norm_squared(), target.norm_squared()


def client_terms(
    updates_weights: list[tuple[float, StateDict]], module: Module, scale: float, frozen: StateDict
) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """(w_i * s, B_i, A_i) per client; a factor a client does not send (FFA's frozen A) is `frozen`'s."""
    terms = []
    for w, weights in updates_weights:
        b = weights[module.b_key] if module.b_key in weights else frozen[module.b_key]
        a = weights[module.a_key] if module.a_key in weights else frozen[module.a_key]
        terms.append((w * scale, b, a))
    return terms


def truncate_rank(state: StateDict, rank: int) -> StateDict:
    """The adapter a client of rank `rank` trains: the first `rank` components (rows of A, columns
    of B), the rest zero. Zero in both factors, those components get zero gradients and stay zero
    (weight decay keeps a zero at zero), so the client's product has rank <= `rank` throughout."""
    out = {}
    for key, value in state.items():
        if A_PART in key and value.shape[0] > rank:
            value = value.clone()
            value[rank:] = 0
        elif B_PART in key and value.shape[1] > rank:
            value = value.clone()
            value[:, rank:] = 0
        out[key] = value
    return out
