"""Reconciliation with simulated boards and a real registry: rows brought up to date from
a device's status when its events were lost; an order the broker lost found by a ping and
sent again (re-signed, a fresh sequence, the same deployment id); nothing sent twice that
arrived once. The same with real agents, a real broker that crashes and ``serve`` is in
``tests/faults``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.controller import Home
from edgefleet.controller.rollout import MAX_RESENDS, deploy, reconcile
from edgefleet.shared import Manifest

from .rollout_sim import Sim, six_boards

GRACE = timedelta(seconds=30)


@pytest.fixture
def sim(home: Home, model_file: Path, model_file_v2: Path) -> Sim:
    return six_boards(home, model_file, model_file_v2)


def deploy_to(sim: Sim, *names: str) -> str:
    rows = deploy(sim.home, "digits:2.0.0", devices=list(names), started_by="t", now=sim.now)
    return rows[0].deployment_id


def sweep(sim: Sim, after: timedelta = timedelta(0)) -> tuple[list[str], list[tuple[str, str]]]:
    sim.now += after
    done = reconcile(sim.home, sim.publish, grace_s=GRACE.total_seconds(), now=sim.now)
    return done.pinged, done.resent


def test_a_commit_whose_events_were_lost_is_read_from_the_status(sim: Sim) -> None:
    rid = deploy_to(sim, "pi4-1", "pi5-1")
    sim.dispatch()
    sim.obey(drop_events=True)  # the broker crashed with their events; statuses came back
    rows = sim.rows(rid)
    assert {n: r.state for n, r in rows.items()} == {"pi4-1": "committed", "pi5-1": "committed"}
    assert rows["pi4-1"].committed_at is not None  # the status's time: latency gates need it
    assert sweep(sim, GRACE * 2) == ([], [])  # nothing left to ask about


def test_a_failure_whose_events_were_lost_is_recorded_with_what_is_known(sim: Sim) -> None:
    sim.boards["pi4-1"].on_deploy = "fail"
    rid = deploy_to(sim, "pi4-1")
    sim.dispatch()
    sim.obey(drop_events=True)
    row = sim.rows(rid)["pi4-1"]
    assert (row.state, row.error_code) == ("failed", "failed")
    assert "status says it failed" in (row.error_message or "")


def test_an_order_the_broker_lost_is_found_by_a_ping_and_sent_again(sim: Sim) -> None:
    rid = deploy_to(sim, "pi4-1", "pi5-1")
    (first, _) = sim.dispatch()
    sim.boards["pi4-1"].inbox.clear()  # the broker acknowledged it, then crashed with it
    sim.obey()  # pi5-1 commits
    assert sim.row_states(rid) == {"pi4-1": "sent", "pi5-1": "committed"}

    assert sweep(sim, GRACE / 2) == ([], [])  # not quiet for long enough yet
    assert sweep(sim, GRACE) == (["pi4-1"], [])  # asked, not yet answered
    assert sweep(sim, timedelta(seconds=5)) == ([], [])  # one ping per grace period
    sim.obey()  # pi4-1 answers the ping: it never got sequence first.sequence
    assert sweep(sim) == ([], [(rid, "pi4-1")])
    assert sim.row_states(rid)["pi4-1"] == "pending"

    (again,) = sim.dispatch()
    assert isinstance(first, Manifest) and isinstance(again, Manifest)
    assert (again.device_id, again.deployment_id) == ("pi4-1", rid)
    assert again.sequence > first.sequence  # re-signed with a fresh sequence
    sim.obey()
    row = sim.rows(rid)["pi4-1"]
    assert (row.state, row.resends) == ("committed", 1)
    assert sweep(sim, GRACE * 2) == ([], [])


def test_an_order_that_was_only_late_is_not_sent_again(sim: Sim) -> None:
    rid = deploy_to(sim, "pi4-1")
    sim.dispatch()
    sim.boards["pi4-1"].on_deploy = "silent"  # busy: it reports nothing for a while
    assert sweep(sim, GRACE) == (["pi4-1"], [])
    sim.boards["pi4-1"].on_deploy = "commit"
    sim.obey(drop_events=True)  # the order first, then the ping's answer
    assert sweep(sim) == ([], [])
    row = sim.rows(rid)["pi4-1"]
    assert (row.state, row.resends) == ("committed", 0)
    assert len(sim.sent_to("pi4-1")) == 1


def test_a_status_from_before_the_ping_does_not_resend(sim: Sim) -> None:
    rid = deploy_to(sim, "pi4-1")
    sim.dispatch()
    sim.boards["pi4-1"].inbox.clear()
    sim.status("pi4-1")  # a status, but sent before any ping: it proves nothing
    assert sweep(sim, GRACE) == (["pi4-1"], [])
    assert sim.row_states(rid)["pi4-1"] == "sent"


def test_offline_devices_are_not_pinged_until_they_return(sim: Sim) -> None:
    rid = deploy_to(sim, "pi4-1")
    sim.go_offline("pi4-1")
    sim.dispatch()  # the broker queues it for the device
    assert sweep(sim, GRACE * 3) == ([], [])
    sim.hello("pi4-1")
    sim.obey()  # it installs what the broker kept
    assert sim.row_states(rid)["pi4-1"] == "committed"
    assert sim.pings == []


def test_resends_are_bounded_then_the_in_progress_timeout_decides(sim: Sim) -> None:
    rid = deploy_to(sim, "pi4-1")
    resent = 0
    for _ in range(MAX_RESENDS + 2):
        sim.dispatch()
        sim.boards["pi4-1"].inbox.clear()  # every copy lost
        sweep(sim, GRACE)
        sim.now += timedelta(seconds=1)
        sim.obey()  # the ping's answer
        resent += len(sweep(sim)[1])
    assert resent == MAX_RESENDS
    row = sim.rows(rid)["pi4-1"]
    assert (row.state, row.resends) == ("sent", MAX_RESENDS)


def test_status_says_plainly_what_needs_an_operator(sim: Sim) -> None:
    from edgefleet.controller.fleet import fleet_status

    sim.boards["pi4-1"].on_deploy = "fail"
    sim.boards["pi5-1"].on_deploy = "silent"
    deploy_to(sim, "pi4-1", "pi5-1", "pi4-2")
    sim.step()
    sim.boards["pi5-1"].online = False  # gone for good: its will said so
    sim.status("pi5-1")
    sim.step(timedelta(minutes=16))  # past the in-progress timeout: pi5-1 is lost
    sim.step(timedelta(minutes=50))
    needs = {s.device: s.attention for s in fleet_status(sim.home, now=sim.now)}
    assert needs["pi4-1"] is not None and needs["pi4-1"].startswith(
        "failed (smoke_test_failed: output differs from the reference)"
    )
    assert needs["pi5-1"] is not None and needs["pi5-1"].startswith("lost: silent after its order")
    assert "nothing heard for 66 min" in needs["pi5-1"]
    assert needs["pi4-2"] is None and needs["pi4-3"] is None  # fine, or never asked
