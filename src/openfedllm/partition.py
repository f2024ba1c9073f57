"""Splitting the training examples over clients: iid, by domain, or Dirichlet over domains.

Every split is seeded and deterministic. A client that would receive no data is an error, not
a silently smaller federation.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .errors import UserError
from .textfmt import text_table

SPLITS = ("iid", "domain", "dirichlet")


def partition(
    domains: list[str], num_clients: int, split: str, seed: int, alpha: float = 0.5
) -> list[list[int]]:
    """Example indices per client, given each example's domain."""
    rng = np.random.default_rng(seed)
    n = len(domains)
    if split == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif split == "domain":
        parts = _by_domain(domains, num_clients, rng)
    elif split == "dirichlet":
        parts = _dirichlet(domains, num_clients, alpha, rng)
    else:
        raise UserError(f"fed.split: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    clients = [sorted(int(i) for i in p) for p in parts]
    for cid, rows in enumerate(clients):
        if not rows:
            raise UserError(
                f"fed.split={split}: client {cid} gets no examples ({n} examples over "
                f"{num_clients} clients); use fewer clients, more data"
                + (", or a larger fed.dirichlet_alpha" if split == "dirichlet" else "")
            )
    return clients


def _by_domain(domains: list[str], num_clients: int, rng) -> list[np.ndarray]:
    """Domains dealt round-robin to clients: with as many clients as domains, one domain each;
    with more clients, a domain's examples are split evenly between the clients that hold it."""
    names = sorted(set(domains))
    holders: dict[str, list[int]] = {d: [] for d in names}
    for cid in range(num_clients):
        holders[names[cid % len(names)]].append(cid)
    for k, d in enumerate(names[num_clients:], start=num_clients):
        holders[d].append(k % num_clients)  # fewer clients than domains: some hold several
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    index = np.arange(len(domains))
    domain_array = np.array(domains)
    for d in names:
        rows = rng.permutation(index[domain_array == d])
        for cid, chunk in zip(holders[d], np.array_split(rows, len(holders[d]))):
            parts[cid].extend(chunk.tolist())
    return [np.array(p, dtype=int) for p in parts]


def _dirichlet(domains: list[str], num_clients: int, alpha: float, rng) -> list[np.ndarray]:
    """For each domain, client shares p ~ Dir(alpha, ..., alpha) (Hsu et al. 2019's label skew)."""
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    index = np.arange(len(domains))
    domain_array = np.array(domains)
    for d in sorted(set(domains)):
        rows = rng.permutation(index[domain_array == d])
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).round().astype(int)
        for cid, chunk in enumerate(np.split(rows, cuts)):
            parts[cid].extend(chunk.tolist())
    return [np.array(p, dtype=int) for p in parts]


def client_table(domains: list[str], clients: list[list[int]]) -> str:
    """A text table of examples per domain for each client."""
    names = sorted(set(domains))
    header = ["client", "total"] + names
    rows = []
    for cid, idx in enumerate(clients):
        counts = Counter(domains[i] for i in idx)
        rows.append([str(cid), str(len(idx))] + [str(counts.get(d, 0)) for d in names])
    return "\n".join(text_table(header, rows))
