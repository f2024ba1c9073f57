"""Splitting the training examples over clients, given each example's label (its domain, category,
or natural key such as a user id, source or language).

- iid: a seeded shuffle cut into equal parts;
- domain: one label (domain) per client, as far as the counts allow;
- dirichlet: per label, client shares p ~ Dir(alpha) (Hsu et al. 2019's label skew);
- key: each distinct label value is a client (the natural split of data that has owners): keys
  below a minimum size are left out, larger ones subsampled to a maximum, the largest kept up
  to the number of clients;
- quantity: power-law client sizes (share of client k proportional to (k + 1)^-exponent, in a
  seeded order), labels iid;
- shards: rows sorted by label, cut into shards, a few shards dealt to each client (McMahan et
  al. 2017's pathological non-IID split).

Every split is seeded and deterministic. A client that would receive no data is an error, not
a silently smaller federation.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, get_args

import numpy as np

from .errors import UserError
from .textfmt import text_table

Split = Literal["iid", "domain", "dirichlet", "key", "quantity", "shards"]
SPLITS = get_args(Split)


def partition(
    domains: list[str],
    num_clients: int,
    split: str,
    seed: int,
    alpha: float = 0.5,
    *,
    key_min_size: int = 1,
    key_max_size: int = 0,
    exponent: float = 1.0,
    shards_per_client: int = 2,
) -> list[list[int]]:
    """Example indices per client, given each example's label."""
    rng = np.random.default_rng(seed)
    n = len(domains)
    if split == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif split == "domain":
        parts = _by_domain(domains, num_clients, rng)
    elif split == "dirichlet":
        parts = _dirichlet(domains, num_clients, alpha, rng)
    elif split == "key":
        parts = _by_key(domains, num_clients, key_min_size, key_max_size, rng)
    elif split == "quantity":
        shares = (np.arange(num_clients) + 1.0) ** -exponent
        shares = rng.permutation(shares / shares.sum())
        cuts = (np.cumsum(shares)[:-1] * n).round().astype(int)
        parts = np.split(rng.permutation(n), cuts)
    elif split == "shards":
        order = np.lexsort((rng.permutation(n), np.array(domains)))  # by label, ties in seeded order
        shards = np.array_split(order, num_clients * shards_per_client)
        dealt = rng.permutation(len(shards))
        parts = [np.concatenate([shards[j] for j in dealt[c::num_clients]]) for c in range(num_clients)]
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


def _by_key(domains: list[str], num_clients: int, min_size: int, max_size: int, rng) -> list[np.ndarray]:
    """One client per distinct key: the `num_clients` largest keys of at least `min_size` rows, each
    subsampled to `max_size` rows (0: no cap)."""
    keys = np.array(domains)
    # each key's rows, ascending, found once: a stable sort by key (a population of 100,000 keys
    # must not scan the file once per key)
    order = np.argsort(keys, kind="stable")
    names, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    rows_of = {str(k): order[s : s + c] for k, s, c in zip(names, starts, counts)}
    eligible = [(int(c), str(k)) for k, c in zip(names, counts) if c >= min_size]
    if len(eligible) < num_clients:
        raise UserError(
            f"fed.split=key: {len(eligible)} distinct keys have at least fed.key_min_size={min_size} "
            f"rows ({len(names)} keys in all); set fed.num_clients to at most {len(eligible)}"
        )
    chosen = sorted(eligible, key=lambda ck: (-ck[0], ck[1]))[:num_clients]
    parts = []
    for _, key in sorted(chosen, key=lambda ck: ck[1]):
        rows = rows_of[key]
        if max_size and len(rows) > max_size:
            rows = np.sort(rng.choice(rows, size=max_size, replace=False))
        parts.append(rows)
    return parts


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


def label_mix(counts: Counter, size: int) -> str:
    """A client's three most common labels with their shares ("math 40%  code 19%  ...")."""
    return "  ".join(f"{label} {n / size:.0%}" for label, n in counts.most_common(3))


def client_table(domains: list[str], clients: list[list[int]], max_columns: int = 8, max_clients: int = 20) -> str:
    """A text table of examples per label for each client; with many labels, each client's top three.
    A population past `max_clients` shows its first ones and a line on the sizes of all."""
    names = sorted(set(domains))
    rows = []
    for cid, idx in enumerate(clients[:max_clients]):
        counts = Counter(domains[i] for i in idx)
        if len(names) <= max_columns:
            rows.append([str(cid), str(len(idx))] + [str(counts.get(d, 0)) for d in names])
        else:
            rows.append([str(cid), str(len(idx)), label_mix(counts, len(idx))])
    header = ["client", "total"] + (names if len(names) <= max_columns else ["label mix (top 3)"])
    table = "\n".join(text_table(header, rows))
    if len(clients) > max_clients:
        sizes = sorted(len(c) for c in clients)
        table += (
            f"\n... and {len(clients) - max_clients:,} more clients; sizes of all {len(clients):,}: "
            f"min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}"
        )
    return table
