"""The reference model says what each consumer must end up with."""

from __future__ import annotations

from uuid import uuid4

from polybus.testing.model import ContractModel, ModelMessage, final_outcome


def message(topic: str, behaviour: str = "ack") -> ModelMessage:
    return ModelMessage(uuid4(), topic, None, behaviour)  # type: ignore[arg-type]


def test_outcomes_follow_the_behaviour() -> None:
    assert final_outcome("ack", 3) == "handled"
    assert final_outcome("fail_once", 2) == "handled"
    assert final_outcome("fail_once", 1) == "dead_lettered"
    assert final_outcome("reject", 3) == "dead_lettered"
    assert final_outcome("fail_always", 3) == "dead_lettered"


def test_a_group_keeps_what_was_published_without_members() -> None:
    model = ContractModel(max_attempts=2)
    model.create_topic("t", 1)
    before = message("t")
    model.publish(before)

    model.subscribe("s0", "t", "g", 0)
    model.unsubscribe("s0")
    kept = [message("t"), message("t", "reject")]
    for m in kept:
        model.publish(m)

    (group,) = model.expectations()
    assert group.handled == (kept[0],)
    assert group.dead_lettered == (kept[1],)
    assert group.exact
    assert group.members_left
    assert model.memberless_groups() == [("t", "g")]


def test_a_broadcast_sees_its_window_and_is_inexact_once_ended() -> None:
    model = ContractModel(max_attempts=2)
    model.create_topic("t", 2)
    model.publish(message("t"))
    model.subscribe("s0", "t", None, 1)
    inside = message("t")
    model.publish(inside)

    assert model.close_connection(1) == ["s0"]
    model.publish(message("t"))

    (broadcast,) = model.expectations()
    assert broadcast.consumer == ("broadcast", "t", "s0")
    assert broadcast.handled == (inside,)
    assert not broadcast.exact


def test_creating_twice_keeps_the_partition_count() -> None:
    model = ContractModel(max_attempts=2)

    assert model.create_topic("t", 3) is True
    assert model.create_topic("t", 1) is False
    assert model.partitions["t"] == 3
