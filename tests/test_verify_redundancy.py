"""Majority logic: accept a strict majority of distinct workers, ask for tie-breakers, fail loudly without one."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from he_compute.client.run import result_digest, tally
from he_compute.errors import ConfigError, NoMajority

A, B, C = ("sha256:" + ch * 64 for ch in "abc")


def test_single_replica_accepts_its_result():
    t = tally({"w1": A}, replicas=1)
    assert t.decided and t.winner == A and t.agreeing == ("w1",) and t.dissenters == ()


def test_waits_for_k_results():
    assert tally({}, replicas=2).more == 2
    assert tally({"w1": A}, replicas=2).more == 1 and not tally({"w1": A}, replicas=2).decided


def test_two_agreeing_replicas_are_accepted():
    t = tally({"w1": A, "w2": A}, replicas=2)
    assert t.winner == A and t.dissenters == ()


def test_a_split_asks_for_one_tie_breaker_then_flags_the_dissenter():
    assert tally({"w1": A, "w2": B}, replicas=2).more == 1
    t = tally({"w1": A, "w2": B, "w3": A}, replicas=2)
    assert t.winner == A and t.agreeing == ("w1", "w3") and t.dissenters == ("w2",)


def test_an_invalid_result_counts_for_nothing_and_flags_its_worker():
    assert tally({"w1": A, "w2": None}, replicas=2).more == 1
    t = tally({"w1": A, "w2": None, "w3": A}, replicas=2)
    assert t.winner == A and t.dissenters == ("w2",)
    assert tally({"w1": None}, replicas=1).more == 1
    assert tally({"w1": None, "w2": None}, replicas=1, max_results=3).more == 1


def test_three_way_split_fails_loudly_naming_the_workers():
    with pytest.raises(NoMajority, match="job j7: 3 results and no majority") as info:
        tally({"w1" + "0" * 14: A, "w2" + "0" * 14: B, "w3" + "0" * 14: C}, replicas=2, label="job j7")
    assert "w10000" in str(info.value) and "\n" not in str(info.value)


def test_a_three_way_split_may_continue_when_the_budget_allows():
    assert tally({"w1": A, "w2": B, "w3": C}, replicas=3, max_results=5).more == 2


def test_k3_with_one_liar_is_decided_without_tie_breaker():
    t = tally({"w1": A, "w2": A, "w3": B}, replicas=3)
    assert t.winner == A and t.dissenters == ("w3",)


def test_misuse():
    with pytest.raises(ConfigError, match="--replicas"):
        tally({}, replicas=0)
    with pytest.raises(ConfigError):
        tally({}, replicas=3, max_results=2)


def test_result_digest_depends_on_order_and_content():
    assert result_digest([A, B]) != result_digest([B, A]) != result_digest([A])
    assert result_digest([A, B]) == result_digest((A, B))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([A, B, C, None]), min_size=1, max_size=9), st.integers(min_value=1, max_value=5))
def test_the_accepted_result_always_has_a_strict_majority(values, k):
    results = {f"w{i}": v for i, v in enumerate(values)}
    valid = [v for v in values if v is not None]
    best = max(Counter(valid).values(), default=0)
    limit = max(k, len(values)) + 2
    try:
        t = tally(results, replicas=k, max_results=limit)
    except NoMajority:
        needed = max(k // 2 + 1 - best, len(valid) - 2 * best + 1)
        assert len(values) + needed > limit
        return
    if t.decided:
        assert len(t.agreeing) >= k // 2 + 1 and len(t.agreeing) * 2 > len(valid)
        assert set(t.agreeing) | set(t.dissenters) == set(results) and not set(t.agreeing) & set(t.dissenters)
        assert all(results[w] == t.winner for w in t.agreeing) and all(results[w] != t.winner for w in t.dissenters)
    else:
        # The answers asked for are the fewest that could still reach the quorum and a strict majority.
        m = t.more
        assert best + m >= k // 2 + 1 and (best + m) * 2 > len(valid) + m
        assert best + m - 1 < k // 2 + 1 or (best + m - 1) * 2 <= len(valid) + m - 1
