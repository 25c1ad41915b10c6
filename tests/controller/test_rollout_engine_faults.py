"""The rollout engine when things go wrong: errors, failed installs, silent and offline
devices, no telemetry, maintenance windows, rollbacks by hand, and the plain deploy; with
the same simulated boards and real registry as ``test_rollout_engine``."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from edgefleet.controller import Home
from edgefleet.controller.registry import Deployment, as_utc
from edgefleet.controller.rollout import (
    Gates,
    Window,
    abort_rollout,
    deploy,
    resume_rollout,
    roll_back,
)
from edgefleet.shared import DeviceState, Manifest, RollbackOrder
from edgefleet.shared.errors import Conflict, NotFound

from .rollout_sim import ALL, PI4, PLAN, Sim, settled, six_boards, start, waves


def utc(when: datetime | None) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back naive ones)."""
    aware = as_utc(when)
    assert aware is not None
    return aware


@pytest.fixture
def sim(home: Home, model_file: Path, model_file_v2: Path) -> Sim:
    return six_boards(home, model_file, model_file_v2)


# -- 4. errors, failed installs, silent devices ---------------------------------------


def test_errors_in_five_percent_of_requests_fail_the_error_gate(sim: Sim) -> None:
    sim.error_rate["2.0.0"] = 0.05
    rid = start(sim)
    sim.run_until(lambda: sim.state(rid) != "running")
    assert sim.state(rid) == "rolling_back"
    (errors,) = [e for e in sim.evaluations(rid) if e.decision == "fail"]
    assert (errors.gate, errors.statistic, errors.threshold) == ("errors", 0.05, 0.01)
    requests, failed = errors.inputs["requests"], errors.inputs["errors"]
    assert requests >= 200 and failed == requests // 20  # judged from 200 requests on
    assert errors.inputs["lower"] > 0.01  # the whole interval is above the threshold
    assert f"{failed} errors in {requests} requests" in sim.rollout(rid).reason
    sim.run_until(lambda: settled(sim, rid), max_steps=3)
    assert sim.state(rid) == "aborted"
    assert sim.row_states(rid)["pi4-1"] == "rolled_back"


def test_a_failed_install_fails_the_install_gate_before_any_bake(sim: Sim) -> None:
    sim.boards["pi4-1"].on_deploy = "fail"
    rid = start(sim)
    sim.run_until(lambda: sim.state(rid) != "running", max_steps=2)
    (install,) = sim.evaluations(rid)  # only the failing judgement is kept
    assert (install.gate, install.decision, install.statistic, install.threshold) == (
        "install", "fail", 1.0, 0.0,
    )  # fmt: skip
    assert install.inputs["failed"] == 1
    first = sim.waves(rid)[0]
    assert first.state == "failed" and first.bake_started_at is None  # it never baked
    # nobody took the version: nothing to send back, so the rollout ends in the same tick
    assert sim.state(rid) == "aborted"
    assert sim.row_states(rid) == {n: "failed" if n == "pi4-1" else "cancelled" for n in ALL}
    assert sim.rows(rid, kind="rollback") == {}
    assert sim.rows(rid)["pi4-1"].error_code == "smoke_test_failed"


def test_a_silent_device_is_lost_after_the_timeout_and_counts_against_its_wave(
    sim: Sim,
) -> None:
    """Quorum 0.6 of three lets one device fail: the wave goes on without it, and its
    late report still settles its row."""
    sim.boards["pi5-1"].on_deploy = "silent"
    plan = PLAN.model_copy(update={"waves": ("3", "100%"), "gates": Gates(quorum=0.6)})
    rid = start(sim, plan)
    started = sim.now
    sim.run_until(lambda: sim.rows(rid)["pi5-1"].state == "failed", max_steps=10)
    lost = sim.rows(rid)["pi5-1"]
    assert (lost.error_code, lost.error_message) == (
        "device_lost",
        "no word from the device 60 s after its order was sent",
    )
    assert (sim.now - started).total_seconds() >= 60  # not a tick before the timeout
    # the wave waited for the silent device until then, and bakes from that tick on
    wave = sim.waves(rid)[0]
    assert (wave.state, utc(wave.bake_started_at)) == ("baking", sim.now)

    sim.run_until(lambda: sim.rollout(rid).current_wave == 1)
    install = [e for e in sim.evaluations(rid) if e.wave == 0 and e.gate == "install"][-1]
    assert (install.decision, install.inputs["lost"], install.inputs["committed"]) == (
        "pass", 1, 2,
    )  # fmt: skip
    assert "1 of 3 devices failed (1 lost)" in install.detail

    # the device wakes up and reports how its order ended: the row is settled by it
    (manifest,) = sim.boards["pi5-1"].inbox
    sim.act("pi5-1", manifest)
    row = sim.rows(rid)["pi5-1"]
    assert (row.state, row.error_code, row.error_message) == ("committed", None, None)
    assert row.committed_at is not None
    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "completed"


def test_a_lost_device_is_sent_back_too_and_goes_back_if_it_installs_late(sim: Sim) -> None:
    """The only device of the first wave is silent: lost, the install gate fails. The
    device may yet carry out its order (it sits at the broker, or half done), so it gets a
    rollback order behind it; when it wakes it installs the version, then goes back."""
    sim.boards["pi4-1"].on_deploy = "silent"
    rid = start(sim)
    sim.run_until(lambda: sim.state(rid) != "running", max_steps=10)
    assert sim.state(rid) == "rolling_back"
    assert sim.rollout(rid).reason.startswith("wave 1: 1 of 1 device failed (1 lost)")
    assert sim.row_states(rid) == {n: "failed" if n == "pi4-1" else "cancelled" for n in ALL}
    assert sim.row_states(rid, kind="rollback") == {"pi4-1": "pending"}

    # its rollback order too goes unanswered: lost in turn, and then the rollout ends
    sim.run_until(lambda: sim.state(rid) != "rolling_back", max_steps=10)
    assert sim.state(rid) == "aborted"
    assert sim.row_states(rid, kind="rollback") == {"pi4-1": "failed"}
    manifest, order = sim.boards["pi4-1"].inbox
    assert isinstance(manifest, Manifest) and isinstance(order, RollbackOrder)
    assert (order.undoes, order.sequence) == (rid, manifest.sequence + 1)

    # the device wakes: it installs the version, then carries out the rollback behind it,
    # and its reports settle both rows though the rollout has ended
    sim.boards["pi4-1"].on_deploy = "commit"
    sim.obey(["pi4-1"])
    assert sim.boards["pi4-1"].serving.deployment_id == sim.v1  # type: ignore[union-attr]
    assert sim.row_states(rid)["pi4-1"] == "rolled_back"
    assert sim.row_states(rid, kind="rollback") == {"pi4-1": "rolled_back"}
    assert sim.rows(rid)["pi4-1"].committed_at is not None


def test_a_lost_device_that_never_took_the_version_refuses_its_rollback(sim: Sim) -> None:
    sim.boards["pi4-1"].on_deploy = "silent"
    rid = start(sim)
    sim.run_until(lambda: sim.state(rid) == "rolling_back", max_steps=10)
    manifest = sim.boards["pi4-1"].inbox[0]
    sim.boards["pi4-1"].inbox.clear()
    sim.boards["pi4-1"].on_deploy = "fail"
    sim.act("pi4-1", manifest)  # its install failed after all, and it says so
    sim.run_until(lambda: settled(sim, rid), max_steps=3)
    assert sim.state(rid) == "aborted"
    assert sim.row_states(rid)["pi4-1"] == "failed"
    assert sim.rows(rid)["pi4-1"].error_code == "smoke_test_failed"
    # the rollback order reached a device serving its old model: refused, nothing undone
    assert sim.row_states(rid, kind="rollback") == {"pi4-1": "failed"}
    assert sim.rows(rid, kind="rollback")["pi4-1"].error_code == "rollback_mismatch"
    assert sim.boards["pi4-1"].serving.deployment_id == sim.v1  # type: ignore[union-attr]


# -- 5. no telemetry --------------------------------------------------------------------


def test_no_telemetry_is_inconclusive_at_the_max_bake_and_pauses_then_resume_bakes_afresh(
    sim: Sim,
) -> None:
    rid = start(sim)
    sim.requests_per_step = 0  # the boards serve, but nobody asks them anything
    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "paused"
    wave = sim.waves(rid)[0]
    assert wave.state == "inconclusive"
    assert (sim.now - utc(wave.bake_started_at)).total_seconds() >= 60
    reason = sim.rollout(rid).reason
    assert reason.startswith("wave 1: not enough evidence after 60 s: ")
    assert "has 50 requests on both models yet" in reason  # each gate says why it waits
    assert "200 requests needed" in reason
    assert {e.decision for e in sim.evaluations(rid) if e.gate != "install"} == {"inconclusive"}

    for _ in range(3):  # paused: nothing is judged
        sim.step()
    assert sim.state(rid) == "paused"
    resume_rollout(sim.home, rid, by="bob", reason="traffic is back", now=sim.now)
    assert sim.rollout(rid).reason == "resumed by bob: traffic is back"
    wave = sim.waves(rid)[0]
    assert (wave.state, wave.decision) == ("baking", None)
    assert utc(wave.bake_started_at) == sim.now

    # a fresh bake: still no traffic, but the old bake's time does not count
    for _ in range(3):
        sim.step()
    assert sim.state(rid) == "running"
    sim.requests_per_step = 200
    assert sim.run_until(lambda: sim.rollout(rid).current_wave == 1) == 2
    assert sim.state(rid) == "running"
    assert waves(sim, rid)[0][0] == "passed"


def test_a_baseline_from_long_before_the_swap_is_not_a_baseline(sim: Sim) -> None:
    """The latency gate compares a device with itself over a window as long as the bake,
    just before the swap: old telemetry from a quiet device's distant past does not count."""
    sim.now += timedelta(minutes=10)  # the boards served nobody for ten minutes
    rid = start(sim)
    sim.dispatch()
    sim.obey()  # pi4-1 swaps at once, its last report on 1.0.0 ten minutes old
    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "paused"
    last = {e.gate: e for e in sim.evaluations(rid)}
    assert (last["latency"].decision, last["latency"].inputs["judged"]) == ("inconclusive", 0)
    assert last["errors"].decision == last["absolute"].decision == "pass"


def _slow_first_interval(sim: Sim, plan: object) -> str:
    """pi4-1 takes 2.0.0, which serves its first ten seconds seven times slower (a model
    loading and warming up beside its neighbours' swaps), then as fast as 1.0.0; a tick
    after each report from there on. The rollout's id."""
    rid = start(sim, plan)  # type: ignore[arg-type]
    sim.dispatch()
    sim.obey()  # pi4-1 swaps now
    sim.latency_ms["2.0.0"] = 14.0  # p95 18 ms: within the profiles' 25 ms limit
    sim.now += timedelta(seconds=10)
    sim.report()
    sim.tick()
    sim.latency_ms["2.0.0"] = 2.0
    for _ in range(3):
        sim.now += timedelta(seconds=10)
        sim.report()
        sim.tick()
    return rid


@pytest.mark.parametrize("settle_s", [10.0, 0.0])
def test_the_seconds_after_a_swap_are_not_held_against_the_version(
    sim: Sim, settle_s: float
) -> None:
    bake = PLAN.bake.model_copy(update={"settle_s": settle_s})  # type: ignore[union-attr]
    rid = _slow_first_interval(sim, PLAN.model_copy(update={"bake": bake}))
    latency = [e for e in sim.evaluations(rid) if e.gate == "latency" and e.wave == 0][-1]
    if settle_s:  # wave 1 passed every gate from the first interval after the settle
        assert sim.waves(rid)[0].decision == "passed"
        assert latency.decision == "pass" and latency.statistic == pytest.approx(1.0)
        assert latency.inputs["new_blocks"] == 1  # the slow first interval left out
    else:  # the same ten seconds hold the wave: a p95 ratio of seven, not a pass
        assert sim.rollout(rid).current_wave == 0 and sim.state(rid) == "running"
        assert latency.decision == "inconclusive" and latency.statistic > 5
        assert latency.inputs["new_blocks"] == 4


def test_a_plainly_slower_version_fails_before_the_bakes_minimum(sim: Sim) -> None:
    sim.latency_ms["2.0.0"] = 6.0  # p95 7.8 ms: within the 25 ms limit, three times 1.0.0
    bake = PLAN.bake.model_copy(update={"min_s": 300, "max_s": 600})  # type: ignore[union-attr]
    rid = start(sim, PLAN.model_copy(update={"waves": ("2", "100%"), "bake": bake}))
    sim.run_until(lambda: sim.state(rid) != "running")
    assert sim.state(rid) == "rolling_back"
    wave = sim.waves(rid)[0]
    assert wave.bake_started_at is not None and wave.decided_at is not None
    assert utc(wave.decided_at) - utc(wave.bake_started_at) < timedelta(seconds=120)
    assert sim.rollout(rid).reason.startswith("wave 1: median p95 ratio 3.0")


# -- 9. offline at the start of a wave -----------------------------------------------------


def test_a_device_offline_when_its_wave_starts_is_sent_its_order_but_not_counted(
    sim: Sim,
) -> None:
    sim.go_offline("pi5-1")
    plan = PLAN.model_copy(update={"waves": ("2", "100%")})
    rid = start(sim, plan)
    assert waves(sim, rid)[0] == ("installing", ["pi4-1"], ["pi5-1"], None)
    sim.dispatch()  # the broker keeps it for the device
    assert [d.device_id for d in sim.sent_to("pi5-1", Manifest)] == ["pi5-1"]

    sim.run_until(lambda: sim.rollout(rid).current_wave == 1)
    assert sim.row_states(rid)["pi5-1"] == "sent"  # never timed out: it is not counted
    judged = [e for e in sim.evaluations(rid) if e.wave == 0]
    assert {e.inputs.get("counted") for e in judged if e.gate == "install"} == {1}
    assert {e.decision for e in judged[-4:]} == {"pass"}

    sim.hello("pi5-1")  # back: it installs what the broker kept for it
    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "completed"
    assert sim.row_states(rid) == dict.fromkeys(ALL, "committed")
    assert len(sim.sent_to("pi5-1")) == 1


# -- 10. maintenance windows and rolling back by hand ----------------------------------------


def _window_opening_in_two_hours(sim: Sim) -> Window:
    opens = sim.now.replace(second=0) + timedelta(hours=2)
    return Window(cron=f"{opens.minute} {opens.hour} * * *", duration_s=3600)


def test_a_closed_window_sends_nothing_and_an_open_one_sends(sim: Sim) -> None:
    window = _window_opening_in_two_hours(sim)
    assert not window.is_open(sim.now)
    rid = start(sim, PLAN.model_copy(update={"waves": ("100%",), "window": window}))
    assert sim.dispatch() == []
    assert sim.row_states(rid) == dict.fromkeys(ALL, "pending")

    opened = window.next_open(sim.now)
    assert sim.dispatch(now=opened - timedelta(seconds=1)) == []
    sim.now = opened
    assert sorted(d.device_id for d in sim.dispatch()) == sorted(ALL)
    assert sim.row_states(rid) == dict.fromkeys(ALL, "sent")


def test_rows_outside_their_window_do_not_hold_up_other_orders(sim: Sim) -> None:
    """The oldest pending rows wait for a window; a deployment recorded after them for
    other devices goes out anyway, however small the batch."""
    window = _window_opening_in_two_hours(sim)
    start(sim, PLAN.model_copy(update={"waves": ("100%",), "window": window}), devices=PI4)
    deploy(sim.home, "digits:2.0.0", devices=["pi5-1"], now=sim.now)
    sent = sim.dispatch(limit=2)
    assert [d.device_id for d in sent] == ["pi5-1"]


def test_rollback_orders_go_out_even_when_the_window_is_closed(sim: Sim) -> None:
    window = _window_opening_in_two_hours(sim)
    plan = PLAN.model_copy(update={"waves": ("2", "100%"), "window": window})
    rid = start(sim, plan)
    sim.latency_ms["2.0.0"] = 4.0
    sim.now = window.next_open(sim.now) - timedelta(seconds=30)
    for _ in range(3):  # a baseline for the gates, and the window opens on the last step
        sim.step()
    assert {s.device for s in sim.sent} == {"pi4-1", "pi5-1"}
    sim.run_until(lambda: sim.state(rid) == "rolling_back")
    sim.now += timedelta(hours=1, minutes=1)
    assert not window.is_open(sim.now)
    assert sorted(d.device_id for d in sim.dispatch() if isinstance(d, RollbackOrder)) == [
        "pi4-1",
        "pi5-1",
    ]


def test_rolling_back_by_hand_needs_a_previous_model_the_registry_knows(sim: Sim) -> None:
    rid = start(sim, PLAN.model_copy(update={"waves": ("100%",), "gates": None, "bake": None}))
    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "completed"

    # every board serves 2.0.0 after 1.0.0: a hand rollback names what it undoes
    rows = roll_back(sim.home, devices=["pi4-1"], by="carol", reason="smells", now=sim.now)
    assert [(r.device, r.kind, r.state, r.model) for r in rows] == [
        ("pi4-1", "rollback", "pending", "digits:1.0.0/fp32")  # where it goes back to
    ]
    (order,) = [d for d in sim.dispatch() if isinstance(d, RollbackOrder)]
    assert (order.device_id, order.undoes) == ("pi4-1", rid)
    assert order.deployment_id == rows[0].deployment_id
    sim.obey()
    assert sim.boards["pi4-1"].serving.deployment_id == sim.v1  # type: ignore[union-attr]
    assert sim.row_states(rid)["pi4-1"] == "rolled_back"

    # pi4-1 serves 1.0.0 now, and the registry knows of nothing before it: refused, for
    # every device chosen, before anything is written
    before = _all_rows(sim)
    with pytest.raises(NotFound, match="pi4-1 has no previous model the registry knows of"):
        roll_back(sim.home, devices=["pi4-2", "pi4-1"], by="carol", now=sim.now)
    assert _all_rows(sim) == before


def test_a_hand_rollback_does_not_reach_into_a_running_gated_rollout(sim: Sim) -> None:
    rid = start(sim)  # wave 1 is pi4-1; the others wait for their waves
    sim.step()
    before = _all_rows(sim)
    for device in ("pi4-1", "pi5-3"):  # in its current wave, or waiting for a later one
        with pytest.raises(Conflict, match=f"{device} is in rollout {rid}"):
            roll_back(sim.home, devices=[device], by="carol", now=sim.now)
    assert _all_rows(sim) == before  # nothing superseded, nothing recorded


def _all_rows(sim: Sim) -> list[tuple[object, ...]]:
    with sim.home.session() as session:
        return sorted(
            (r.id, r.deployment_id, r.device_id, r.state, r.kind, r.undoes)
            for r in session.exec(select(Deployment)).all()
        )


# -- 11. the plain deploy ------------------------------------------------------------------


def test_a_plain_deploy_completes_once_every_row_finished(sim: Sim) -> None:
    sim.boards["pi5-3"].on_deploy = "fail"
    sim.go_offline("pi4-3")
    rows = deploy(sim.home, "digits:2.0.0", devices=ALL, started_by="dave", now=sim.now)
    rid = rows[0].deployment_id
    assert {r.state for r in rows} == {"pending"} and {r.deployment_id for r in rows} == {rid}
    ((state, counted, queued, _),) = waves(sim, rid)
    assert (state, sorted(counted), queued) == (
        "installing",
        sorted(set(ALL) - {"pi4-3"}),
        ["pi4-3"],
    )
    sim.step()
    states = sim.row_states(rid)
    assert states == {
        **dict.fromkeys(ALL, "committed"), "pi5-3": "failed", "pi4-3": "sent",
    }  # fmt: skip
    for _ in range(3):
        sim.step()
    assert sim.state(rid) == "running"  # pi4-3 has its order at the broker, not done yet
    sim.hello("pi4-3")
    sim.run_until(lambda: settled(sim, rid), max_steps=2)
    assert sim.state(rid) == "completed"
    assert sim.row_states(rid)["pi4-3"] == "committed"
    assert sim.evaluations(rid) == []  # no gates
    assert sim.rows(rid)["pi5-3"].error_code == "smoke_test_failed"


def test_a_plain_deploys_rows_move_with_the_devices_events_as_before(sim: Sim) -> None:
    rows = deploy(sim.home, "digits:2.0.0", devices=["pi4-1"], now=sim.now)
    rid = rows[0].deployment_id
    assert sim.row_states(rid) == {"pi4-1": "pending"}
    sim.dispatch()
    assert sim.row_states(rid) == {"pi4-1": "sent"}
    sim.event("pi4-1", rid, DeviceState.DOWNLOADING)
    assert sim.row_states(rid) == {"pi4-1": "in_progress"}
    sim.boards["pi4-1"].inbox.clear()
    sim.event("pi4-1", rid, DeviceState.COMMITTED)
    assert sim.row_states(rid) == {"pi4-1": "committed"}
    sim.event("pi4-1", rid, DeviceState.FAILED, ok=False)  # a late duplicate changes nothing
    assert sim.row_states(rid) == {"pi4-1": "committed"}
    sim.step()
    assert sim.state(rid) == "completed"
    assert sim.rollout(rid).reason == "wave 1 installed; done"


def test_a_wave_short_of_requests_pauses_naming_the_devices(sim: Sim) -> None:
    bake = PLAN.bake.model_copy(update={"min_requests": 5000})  # type: ignore[union-attr]
    gates = Gates(enabled=("install", "errors"))  # both pass: only the bake is short
    rid = start(sim, PLAN.model_copy(update={"bake": bake, "gates": gates}))
    sim.run_until(lambda: sim.state(rid) != "running")
    assert sim.state(rid) == "paused"
    reason = sim.rollout(rid).reason
    assert reason.startswith("wave 1: not enough evidence after")
    assert reason.endswith("fewer than 5000 requests on pi4-1")


def test_abort_sends_back_a_device_still_working_on_the_version(sim: Sim) -> None:
    """A wave device that has the order but has not finished (a download waiting for the
    server, say) gets its rollback order with the others at once: the agent sets a waiting
    download aside for it, or goes back after finishing. Not a tick later, when it commits."""
    sim.boards["pi5-1"].on_deploy = "silent"  # holds the order, reports nothing yet
    rid = start(sim, PLAN.model_copy(update={"waves": ("2", "100%")}))
    sim.step()
    assert sim.row_states(rid)["pi5-1"] == "sent"
    abort_rollout(sim.home, rid, by="dave", now=sim.now)
    assert sim.row_states(rid, kind="rollback") == dict.fromkeys(("pi4-1", "pi5-1"), "pending")
    sim.boards["pi5-1"].on_deploy = "commit"  # it gets to its orders, in sequence order
    sim.run_until(lambda: settled(sim, rid), max_steps=4)
    assert sim.state(rid) == "aborted"
    assert {n: b.serving.deployment_id for n, b in sim.boards.items() if b.serving} == (
        dict.fromkeys(ALL, sim.v1)
    )
