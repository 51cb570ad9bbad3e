"""The soak's fault plan replays from its seed: the faults it injects (which, when, how long, which of the
candidates) are drawn from a source of their own, so the load's timing-dependent draws cannot shift them.
No servers needed: the plan is drawn before anything starts."""

from __future__ import annotations

from bench.soak.faults import CLUSTER_REDIS, SERVER_REDIS, Faults, fault_plan, plan_digest


def test_the_same_seed_plans_the_same_faults_and_another_seed_others() -> None:
    kinds = Faults.FAULTS
    first, again = fault_plan(21, kinds, 8.0, 600), fault_plan(21, kinds, 8.0, 600)
    other = fault_plan(22, kinds, 8.0, 600)
    assert first == again
    assert plan_digest(first) == plan_digest(again)
    assert [p.kind for p in first] != [p.kind for p in other]
    assert plan_digest(first) != plan_digest(other)


def test_a_longer_run_replays_the_shorter_ones_faults_first() -> None:
    """A failure seen after 10 minutes of a 60-minute run replays in a 10-minute run of the same seed."""
    short, long = fault_plan(7, Faults.FAULTS, 8.0, 600), fault_plan(7, Faults.FAULTS, 8.0, 3600)
    assert long[:len(short)] == short
    assert sum(p.gap for p in short) < 600 <= sum(p.gap for p in long[:len(short) + 1])


def test_a_cluster_run_draws_the_cluster_faults_and_not_the_single_servers() -> None:
    kinds = Faults.kinds_for(cluster=True)
    drawn = {p.kind for p in fault_plan(21, kinds, 8.0, 3600)}
    assert set(CLUSTER_REDIS) <= drawn
    assert not drawn & set(SERVER_REDIS)
