from collections import Counter

import pytest

from openfedllm.errors import UserError
from openfedllm.partition import client_table, partition

DOMAINS = ["a"] * 10 + ["b"] * 10 + ["c"] * 10


def _covers_once(clients, n):
    flat = [i for c in clients for i in c]
    return sorted(flat) == list(range(n))


def test_iid_equal_sizes_disjoint_and_complete():
    clients = partition(DOMAINS, 4, "iid", seed=0)
    assert sorted(len(c) for c in clients) == [7, 7, 8, 8]
    assert _covers_once(clients, 30)


def test_same_seed_same_split_other_seed_other_split():
    assert partition(DOMAINS, 3, "iid", 0) == partition(DOMAINS, 3, "iid", 0)
    assert partition(DOMAINS, 3, "iid", 0) != partition(DOMAINS, 3, "iid", 1)
    assert partition(DOMAINS, 3, "dirichlet", 5, 2.0) == partition(DOMAINS, 3, "dirichlet", 5, 2.0)


def test_domain_split_gives_each_client_one_domain():
    clients = partition(DOMAINS, 3, "domain", seed=0)
    assert [{DOMAINS[i] for i in c} for c in clients] == [{"a"}, {"b"}, {"c"}]
    assert _covers_once(clients, 30)


def test_domain_split_with_more_clients_than_domains_splits_a_domain():
    clients = partition(DOMAINS, 4, "domain", seed=0)
    # client 3 shares domain "a" with client 0, half each
    assert [{DOMAINS[i] for i in c} for c in clients] == [{"a"}, {"b"}, {"c"}, {"a"}]
    assert [len(c) for c in clients] == [5, 10, 10, 5]


def test_domain_split_with_fewer_clients_than_domains_deals_domains_round_robin():
    clients = partition(DOMAINS, 2, "domain", seed=0)
    assert [{DOMAINS[i] for i in c} for c in clients] == [{"a", "c"}, {"b"}]


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_even():
    domains = ["a"] * 300 + ["b"] * 300
    skewed = partition(domains, 3, "dirichlet", seed=0, alpha=0.05)
    even = partition(domains, 3, "dirichlet", seed=0, alpha=1000.0)
    for clients in (skewed, even):
        assert _covers_once(clients, 600)
    # with huge alpha every client holds ~100 of each domain; with tiny alpha one client dominates
    for c in even:
        counts = Counter(domains[i] for i in c)
        assert 80 <= counts["a"] <= 120 and 80 <= counts["b"] <= 120
    top_share = max(Counter(domains[i] for i in c)["a"] for c in skewed) / 300
    assert top_share > 0.8


def test_empty_client_is_an_error():
    with pytest.raises(UserError, match="client 3 gets no examples"):
        partition(["a", "b", "c"], 4, "iid", seed=0)


def test_unknown_split_is_an_error():
    with pytest.raises(UserError, match="valid: iid, domain, dirichlet"):
        partition(DOMAINS, 2, "by-mood", seed=0)


def test_client_table_counts_per_domain():
    table = client_table(["a", "a", "b"], [[0, 2], [1]]).splitlines()
    assert table[0].split() == ["client", "total", "a", "b"]
    assert table[1].split() == ["0", "2", "1", "1"]
    assert table[2].split() == ["1", "1", "1", "0"]


def test_client_table_with_many_labels_shows_each_clients_top_three():
    labels = [f"user{i % 12}" for i in range(24)]
    table = client_table(labels, [list(range(12)), list(range(12, 24))]).splitlines()
    assert table[0].split() == ["client", "total", "label", "mix", "(top", "3)"]
    assert "user0 8%" in table[1] and len(table) == 3
