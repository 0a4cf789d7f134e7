"""The reconciler's planning rules, as pure functions: how many to start, which to stop, where to place."""

from __future__ import annotations

from llmctl.controlplane.planning import Member, NodeRoom, place, plan_deployment

CURRENT, OLD = 2, 1


def ready(replica_id: int, revision: int = CURRENT, **kw) -> Member:
    return Member(replica_id, revision, ready=True, **kw)


def starting(replica_id: int, revision: int = CURRENT, **kw) -> Member:
    return Member(replica_id, revision, ready=False, **kw)


def stopped_ids(plan) -> list[int]:
    return [replica_id for replica_id, _why in plan.stop]


def test_a_new_deployment_starts_all_its_replicas():
    plan = plan_deployment(3, CURRENT, [])
    assert (plan.start, plan.stop) == (3, ())


def test_a_converged_deployment_is_left_alone():
    plan = plan_deployment(2, CURRENT, [ready(1), ready(2)])
    assert (plan.start, plan.stop) == (0, ())


def test_a_rollout_surges_and_keeps_old_replicas_until_new_ones_are_ready():
    old = [ready(1, OLD), ready(2, OLD)]
    assert plan_deployment(2, CURRENT, old).start == 2
    plan = plan_deployment(2, CURRENT, old + [starting(3), starting(4)])
    assert (plan.start, plan.stop) == (0, ())
    plan = plan_deployment(2, CURRENT, old + [ready(3), starting(4)])
    assert stopped_ids(plan) == [2]  # one new ready: one old goes (the newest old; the oldest is kept)
    assert "ready in its place" in plan.stop[0][1]
    plan = plan_deployment(2, CURRENT, [ready(1, OLD), ready(3), ready(4)])
    assert stopped_ids(plan) == [1]


def test_old_replicas_that_do_not_serve_are_stopped_at_once():
    plan = plan_deployment(1, CURRENT, [starting(1, OLD), ready(2, OLD)])
    assert stopped_ids(plan) == [1] and plan.start == 1


def test_scaling_down_stops_replicas_not_serving_first_then_the_newest():
    plan = plan_deployment(1, CURRENT, [ready(1), ready(2), ready(3)])
    assert stopped_ids(plan) == [3, 2] and plan.start == 0
    plan = plan_deployment(2, CURRENT, [ready(1), starting(2), ready(3)])
    assert stopped_ids(plan) == [2]
    assert plan_deployment(0, CURRENT, [ready(1), ready(2)]).stop[0][1] == "scaled down to 0"


def test_replicas_on_a_draining_node_are_replaced_before_they_stop():
    draining = ready(1, on_draining_node=True)
    plan = plan_deployment(1, CURRENT, [draining])
    assert (plan.start, plan.stop) == (1, ())
    assert plan_deployment(1, CURRENT, [draining, starting(2)]).stop == ()
    plan = plan_deployment(1, CURRENT, [draining, ready(2)])
    assert plan.stop == ((1, "its node is draining and a replacement is ready"),)


def test_a_held_revision_starts_nothing_but_still_scales_down():
    plan = plan_deployment(2, CURRENT, [], may_start=False)
    assert plan.start == 0
    plan = plan_deployment(1, CURRENT, [starting(1), starting(2)], may_start=False)
    assert stopped_ids(plan) == [2]


def test_placement_fills_the_emptiest_node_first_and_respects_max_replicas():
    rooms = [NodeRoom("b", used=1, capacity=4), NodeRoom("a", used=1, capacity=4),
             NodeRoom("c", used=0, capacity=1)]
    assert place(4, rooms) == ["c", "a", "b", "a"]
    assert [(r.name, r.used) for r in rooms] == [("b", 2), ("a", 3), ("c", 1)]


def test_placement_returns_fewer_nodes_when_the_fleet_is_full():
    rooms = [NodeRoom("a", used=3, capacity=4), NodeRoom("b", used=2, capacity=2)]
    assert place(3, rooms) == ["a"]
    assert place(1, []) == []
