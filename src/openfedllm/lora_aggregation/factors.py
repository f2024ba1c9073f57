"""Sums of LoRA products kept in factored form, never as a dense d_out x d_in matrix per client.

A LoRA module adds s * B @ A to a frozen weight W (B: d_out x r, A: r x d_in, s = alpha / r).
The clients' weighted sum  sum_i w_i s_i B_i A_i  equals one product U @ V of the stacked factors
U = [w_1 s_1 B_1, ..., w_N s_N B_N] (d_out x R) and V = [A_1; ...; A_N] (R x d_in), R = sum r_i.
Every method of this package works on such stacks: its Frobenius norm and its best rank-k
approximation from R x R Gram matrices, layers of one shape in one batch. Computed in float64:
"exact" below means to float64 rounding.
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


NARROW = (torch.float32, torch.bfloat16, torch.float16)  # factors float32 holds exactly


@dataclass
class Stack:
    """U @ V as stacked factors: U (d_out x R), V (R x d_in), float64. When U was made from the
    clients' own factors, `b` keeps them (float32, exact for float32 / bf16 / fp16 factors) and
    `coef` each column's coefficient, U = b * coef bit for bit, so the stack can travel at half the
    bytes of U (merges.py)."""

    u: torch.Tensor
    v: torch.Tensor
    b: torch.Tensor | None = None
    coef: torch.Tensor | None = None

    @classmethod
    def of(cls, terms: list[tuple[float, torch.Tensor, torch.Tensor]]) -> Stack:
        """sum_k c_k * B_k @ A_k from (c_k, B_k, A_k) terms (any ranks)."""
        u = torch.cat([c * b.to(torch.float64) for c, b, _ in terms], dim=1)
        v = torch.cat([a.to(torch.float64) for _, _, a in terms], dim=0)
        if not all(b.dtype in NARROW for _, b, _ in terms):
            return cls(u, v)
        b = torch.cat([b.to("cpu", torch.float32) for _, b, _ in terms], dim=1)
        coef = torch.cat([torch.full((b_k.shape[1],), float(c), dtype=torch.float64) for c, b_k, _ in terms])
        return cls(u, v, b, coef)

    def plus(self, other: Stack) -> Stack:
        u, v = torch.cat([self.u, other.u], dim=1), torch.cat([self.v, other.v], dim=0)
        if self.b is None or other.b is None or self.coef is None or other.coef is None:
            return Stack(u, v)
        return Stack(u, v, torch.cat([self.b, other.b], dim=1), torch.cat([self.coef, other.coef]))

    def minus(self, other: Stack) -> Stack:
        negated = None if other.coef is None else -other.coef  # b * (-c) = -(b * c), exactly
        return self.plus(Stack(-other.u, other.v, other.b, negated))

    def dense(self) -> torch.Tensor:
        return self.u @ self.v  # (d_out, d_in)


def error_norms(target: Stack, result: Stack) -> tuple[float, float]:
    """(||T - G||_F^2, ||T||_F^2) for T = target, G = result, from Gram matrices:
    ||T - G||^2 = ||T||^2 - 2 <T, G> + ||G||^2, each a sum((U^T U') * (V V'^T)); T's Gram, the
    large one, is computed once."""

    def inner(x: Stack, y: Stack) -> float:
        return float(((x.u.T @ y.u) * (x.v @ y.v.T)).sum())

    tt = inner(target, target)
    return max(tt - 2 * inner(target, result) + inner(result, result), 0.0), tt


def group_by_shape(found: list[Module], state: StateDict) -> list[list[Module]]:
    """The modules whose factors have one shape (all q_proj, ...): one batch for `best_factors`."""
    groups: dict[tuple, list[Module]] = {}
    for module in found:
        groups.setdefault((*state[module.b_key].shape, state[module.a_key].shape[1]), []).append(module)
    return list(groups.values())


def stacked(
    updates_weights: list[tuple[float, StateDict]], group: list[Module], scale: float, frozen: StateDict
) -> tuple[torch.Tensor, torch.Tensor]:
    """U (layers, d_out, R) and V (layers, R, d_in) of sum_i w_i s B_i A_i for modules of one shape,
    written straight into one buffer per side (R = sum r_i), in float32: the clients' precision."""
    terms = [client_terms(updates_weights, module, scale, frozen) for module in group]
    first = terms[0]
    width = sum(b.shape[1] for _, b, _ in first)
    u = torch.empty(len(group), first[0][1].shape[0], width, dtype=torch.float32)
    v = torch.empty(len(group), width, first[0][2].shape[1], dtype=torch.float32)
    for layer, module_terms in enumerate(terms):
        at = 0
        for c, b, a in module_terms:
            r = b.shape[1]
            u[layer, :, at : at + r].copy_(b).mul_(c)
            v[layer, at : at + r].copy_(a)
            at += r
    return u, v


def best_factors(u: torch.Tensor, v: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B (layers, d_out, rank), A (layers, rank, d_in) with scale * B @ A the best rank-`rank`
    approximation of each layer's U V (Eckart-Young), the singular values split evenly between B
    and A (zero-padded where U V has lower rank).

    Through R x R Gram matrices, never a thin QR (3-5x slower at R = 160): with U^T U = E S^2 E^T,
    U = Q_u S E^T for an orthonormal Q_u = U E S^-1 (directions with S ~ 0, where U is zero,
    dropped), so U V = Q_u W with W = S E^T V, and the SVD of W follows from W W^T =
    S E^T (V V^T) E S = P Sigma^2 P^T. Then B = U E S^-1 P_k Sigma_k^1/2 and
    A = Sigma_k^-1/2 P_k^T S E^T V (each / sqrt(scale)). The two d x R products (the Grams, and
    the final B and A) run in the inputs' dtype; everything R x R in float64. At rank >= R,
    s B A = U (E S^-1 P)(P^T S E^T) V = U V: exact to the inputs' rounding, whatever the Grams'."""
    dtype, tiny = u.dtype, torch.finfo(torch.float64).tiny
    gram_u = (u.transpose(1, 2) @ u).double()
    gram_v = (v @ v.transpose(1, 2)).double()
    lam, e = torch.linalg.eigh(gram_u)  # U^T U = E diag(lam) E^T, ascending
    floor = (1e-12 if dtype == torch.float64 else 1e-6) * lam.amax(dim=1, keepdim=True)  # below: rounding noise
    keep = lam > floor.clamp(min=tiny)
    root = torch.where(keep, lam.clamp(min=0).sqrt(), torch.zeros_like(lam))  # S
    inverse = torch.where(keep, 1 / root.clamp(min=tiny), torch.zeros_like(lam))
    middle = e.transpose(1, 2) @ gram_v @ e  # E^T V V^T E
    sigma2, p = torch.linalg.eigh(root[:, :, None] * middle * root[:, None, :])  # ascending
    k = min(rank, sigma2.shape[1])
    sigma2, p = sigma2.flip(1)[:, :k].clamp(min=0), p.flip(2)[:, :, :k]  # the k largest first
    half = sigma2.sqrt().sqrt()  # Sigma^1/2
    inv_half = torch.where(half > 0, 1 / half.clamp(min=tiny), torch.zeros_like(half))
    to_b = (e @ (inverse[:, :, None] * p)) * (half / scale**0.5)[:, None, :]  # (layers, R, k)
    to_a = (inv_half / scale**0.5)[:, :, None] * (root[:, :, None] * p).transpose(1, 2) @ e.transpose(1, 2)
    b = torch.zeros(u.shape[0], u.shape[1], rank, dtype=dtype)
    a = torch.zeros(u.shape[0], rank, v.shape[2], dtype=dtype)
    b[:, :, :k] = u @ to_b.to(dtype)
    a[:, :k] = to_a.to(dtype) @ v
    return b, a


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


def narrow_rank(state: StateDict, rank: int) -> StateDict:
    """What a client of rank `rank` sends and receives: its first `rank` components alone (the
    rows of A and columns of B that truncate_rank keeps; the rest are zeros both sides know)."""
    out = {}
    for key, value in state.items():
        if A_PART in key:
            value = value[:rank]
        elif B_PART in key:
            value = value[:, :rank]
        out[key] = value.contiguous()
    return out


def widen_rank(state: StateDict, like: StateDict) -> StateDict:
    """narrow_rank undone: each tensor in `like`'s shape, zero beyond the components given."""
    out = {}
    for key, value in state.items():
        ref = like[key]
        if value.shape == ref.shape:
            out[key] = value
            continue
        full = torch.zeros(ref.shape, dtype=value.dtype, device=value.device)
        full[tuple(slice(0, n) for n in value.shape)] = value
        out[key] = full
    return out
