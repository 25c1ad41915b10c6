"""The rollout engine against a real registry: the transition table, and whole rollouts
driven by simulated boards (``rollout_sim``) whose status, events and telemetry go through
the real ingest, whose orders come from the real dispatch (signed, decoded, verified), and
whose waves are judged by ``advance_rollouts`` on a clock the test moves."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from edgefleet.controller import Home, load_settings, open_home
from edgefleet.controller.registry import Rollout, RolloutState, as_utc
from edgefleet.controller.rollout import (
    TRANSITIONS,
    Bake,
    Outcome,
    Transition,
    abort_rollout,
    advance_rollouts,
    gate_analysis,
    next_state,
    pause_rollout,
    promote_rollout,
    resend_unconfirmed,
    resume_rollout,
    rollout_detail,
)
from edgefleet.controller.rollout import _advance as advance_module
from edgefleet.controller.rollout._effects import apply_outcome, compare_and_set
from edgefleet.shared import Manifest, RollbackOrder
from edgefleet.shared.errors import Conflict

from .rollout_sim import ALL, PLAN, STEP, Sim, settled, six_boards, start, waves


@pytest.fixture
def sim(home: Home, model_file: Path, model_file_v2: Path) -> Sim:
    return six_boards(home, model_file, model_file_v2)


# -- 1. the transition table -------------------------------------------------------


@pytest.mark.parametrize("state", list(RolloutState))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_state_and_outcome_goes_where_the_table_says_or_conflicts(
    state: RolloutState, outcome: Outcome
) -> None:
    expected = {
        (RolloutState.RUNNING, Outcome.WAVE_PASSED): RolloutState.RUNNING,
        (RolloutState.RUNNING, Outcome.LAST_WAVE_PASSED): RolloutState.COMPLETED,
        (RolloutState.RUNNING, Outcome.PROMOTED_FULL): RolloutState.RUNNING,
        (RolloutState.RUNNING, Outcome.GATE_FAILED): RolloutState.ROLLING_BACK,
        (RolloutState.RUNNING, Outcome.GATE_FAILED_HOLD): RolloutState.PAUSED,
        (RolloutState.RUNNING, Outcome.INCONCLUSIVE): RolloutState.PAUSED,
        (RolloutState.RUNNING, Outcome.PAUSE): RolloutState.PAUSED,
        (RolloutState.RUNNING, Outcome.ABORT): RolloutState.ROLLING_BACK,
        (RolloutState.PAUSED, Outcome.WAVE_PASSED): RolloutState.RUNNING,
        (RolloutState.PAUSED, Outcome.LAST_WAVE_PASSED): RolloutState.COMPLETED,
        (RolloutState.PAUSED, Outcome.PROMOTED_FULL): RolloutState.RUNNING,
        (RolloutState.PAUSED, Outcome.RESUME): RolloutState.RUNNING,
        (RolloutState.PAUSED, Outcome.ABORT): RolloutState.ROLLING_BACK,
        (RolloutState.ROLLING_BACK, Outcome.ROLLED_BACK): RolloutState.ABORTED,
    }
    assert expected == TRANSITIONS  # the table itself, read top to bottom
    if (state, outcome) in expected:
        assert next_state(state, outcome) is expected[(state, outcome)]
    else:
        with pytest.raises(Conflict, match=f"{state.value} cannot take {outcome.value}"):
            next_state(state, outcome)


def test_finished_rollouts_take_no_outcome_at_all() -> None:
    for state in (RolloutState.COMPLETED, RolloutState.ABORTED):
        assert not [o for o in Outcome if (state, o) in TRANSITIONS]


# -- 2. a good version --------------------------------------------------------------


def test_a_good_version_promotes_through_three_waves_spread_across_profiles(sim: Sim) -> None:
    rid = start(sim)
    assert waves(sim, rid) == [
        ("installing", ["pi4-1"], [], None),
        ("waiting", [], [], None),
        ("waiting", [], [], None),
    ]
    assert sim.row_states(rid) == {n: "pending" if n == "pi4-1" else "waiting" for n in ALL}

    # the first wave passes; the second starts; the third's rows are still only waiting
    sim.run_until(lambda: sim.rollout(rid).current_wave == 1)
    assert [w[:2] for w in waves(sim, rid)] == [
        ("passed", ["pi4-1"]),
        ("installing", ["pi4-2", "pi5-1"]),
        ("waiting", []),
    ]
    states = sim.row_states(rid)
    assert {n: states[n] for n in ("pi4-3", "pi5-2", "pi5-3")} == dict.fromkeys(
        ("pi4-3", "pi5-2", "pi5-3"), "waiting"
    )
    assert {s.device for s in sim.sent} <= {"pi4-1", "pi4-2", "pi5-1"}

    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "completed"
    assert [w[:2] for w in waves(sim, rid)] == [
        ("passed", ["pi4-1"]),
        ("passed", ["pi4-2", "pi5-1"]),  # frozen when the wave started
        ("passed", ["pi4-3", "pi5-2", "pi5-3"]),
    ]
    assert sim.row_states(rid) == dict.fromkeys(ALL, "committed")
    assert "passed its gates; done" in sim.rollout(rid).reason

    # one manifest each, signed, sent only once the device's wave had started
    detail = rollout_detail(sim.home, rid)
    started = {d: w.started_at for w in detail.waves for d in w.devices}
    for name in ALL:
        (manifest,) = sim.sent_to(name)
        assert isinstance(manifest, Manifest)
        assert (manifest.deployment_id, str(manifest.model)) == (rid, "digits:2.0.0/fp32")
        wave_start = started[name]
        assert wave_start is not None and manifest.issued_at >= wave_start
    assert [sorted(s.device for s in sim.sent[a:b]) for a, b in ((0, 1), (1, 3), (3, 6))] == [
        ["pi4-1"], ["pi4-2", "pi5-1"], ["pi4-3", "pi5-2", "pi5-3"],
    ]  # fmt: skip

    # every wave was judged by every gate, and each stored figure has its threshold
    evaluations = gate_analysis(sim.home, rid)
    for wave in (0, 1, 2):
        last = {e.gate: e for e in evaluations if e.wave == wave}
        assert set(last) == {"install", "latency", "absolute", "errors"}
        assert {e.decision for e in last.values()} == {"pass"}
        assert last["latency"].statistic == pytest.approx(1.0)
        assert last["latency"].threshold == pytest.approx(1.3)
        assert last["errors"].statistic == 0 and last["errors"].threshold == 0.01
        assert last["absolute"].threshold == (25.0 if wave == 0 else 10.0)  # rpi4 / rpi5
        assert last["absolute"].statistic is not None and last["absolute"].statistic < 3
    assert [(t.before, t.after) for t in sim.transitions] == [("running", "completed")]


def test_a_wave_does_not_pass_before_its_minimum_bake(sim: Sim) -> None:
    plan = PLAN.model_copy(update={"bake": Bake(min_requests=50, min_s=40, max_s=120)})
    rid = start(sim, plan)
    sim.run_until(lambda: sim.rollout(rid).current_wave == 1)
    wave = sim.waves(rid)[0]
    assert wave.bake_started_at is not None and wave.decided_at is not None
    baked = wave.decided_at - wave.bake_started_at
    assert baked >= timedelta(seconds=40)
    assert baked < timedelta(seconds=60)  # and not much longer: its gates passed before
    passes = [e for e in sim.evaluations(rid) if e.wave == 0 and e.decision == "pass"]
    assert {e.gate for e in passes} == {"install", "latency", "absolute", "errors"}


# -- 3. a slower version ------------------------------------------------------------


def test_a_slower_version_fails_the_latency_gate_and_every_touched_device_goes_back(
    sim: Sim,
) -> None:
    sim.latency_ms["2.0.0"] = 4.0
    plan = PLAN.model_copy(update={"waves": ("2", "50%", "100%")})
    rid = start(sim, plan)
    sim.run_until(lambda: sim.state(rid) != "running")
    assert sim.state(rid) == "rolling_back"
    reason = sim.rollout(rid).reason
    assert reason.startswith("wave 1: median p95 ratio 1.9") and "> 1.30" in reason

    (latency,) = [e for e in sim.evaluations(rid) if e.gate == "latency" and e.decision == "fail"]
    assert latency.statistic == pytest.approx(2.0, rel=0.05)
    assert latency.threshold == pytest.approx(1.3)
    assert latency.inputs["test"] == "rank" and latency.inputs["p_value"] < 0.01

    # one rollback row per committed device, recorded with the state change
    backs = sim.rows(rid, kind="rollback")
    assert sorted(backs) == ["pi4-1", "pi5-1"]
    assert {(r.deployment_id, r.undoes, r.state) for r in backs.values()} == {
        (f"{rid}.rollback", rid, "pending")
    }
    sim.step()  # sent, and the boards obey
    for name in ("pi4-1", "pi5-1"):
        manifest, order = sim.sent_to(name)
        assert isinstance(manifest, Manifest) and isinstance(order, RollbackOrder)
        assert order.sequence > manifest.sequence
        assert (order.undoes, order.deployment_id) == (rid, f"{rid}.rollback")
        assert sim.boards[name].serving.deployment_id == sim.v1  # type: ignore[union-attr]

    sim.run_until(lambda: settled(sim, rid), max_steps=3)
    assert sim.state(rid) == "aborted"
    assert sim.rollout(rid).reason == reason  # why it was aborted stays readable
    states = sim.row_states(rid)
    assert states == {n: "rolled_back" if n in ("pi4-1", "pi5-1") else "cancelled" for n in ALL}
    assert sim.row_states(rid, kind="rollback") == dict.fromkeys(("pi4-1", "pi5-1"), "rolled_back")
    assert {s.device for s in sim.sent} == {"pi4-1", "pi5-1"}  # the others never heard of it
    assert [(w[0], w[3]) for w in waves(sim, rid)] == [
        ("failed", "failed"),
        ("cancelled", "cancelled"),
        ("cancelled", "cancelled"),
    ]
    assert [(t.before, t.after) for t in sim.transitions] == [
        ("running", "rolling_back"),
        ("rolling_back", "aborted"),
    ]


def test_with_on_fail_hold_a_failed_gate_pauses_and_sends_nothing_back(sim: Sim) -> None:
    sim.latency_ms["2.0.0"] = 4.0
    rid = start(sim, PLAN.model_copy(update={"on_fail": "hold"}))
    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "paused"
    assert sim.rollout(rid).reason.startswith("wave 1: median p95 ratio")
    assert waves(sim, rid)[0][0] == "failed"
    assert sim.rows(rid, kind="rollback") == {}
    assert sim.row_states(rid)["pi4-1"] == "committed"
    for _ in range(3):
        sim.step()
    assert sim.state(rid) == "paused" and [s.device for s in sim.sent] == ["pi4-1"]


# -- 6. what operators do ---------------------------------------------------------------


def test_pause_holds_back_the_rollouts_orders_and_resume_lets_them_go(sim: Sim) -> None:
    rid = start(sim)
    paused = pause_rollout(sim.home, rid, by="alice", reason="lunch", now=sim.now)
    assert (paused.state, paused.reason) == ("paused", "paused by alice: lunch")
    for _ in range(3):
        sim.step()
    assert sim.sent == [] and sim.row_states(rid)["pi4-1"] == "pending"
    assert sim.evaluations(rid) == []  # nothing is judged while paused either

    resumed = resume_rollout(sim.home, rid, by="bob", now=sim.now)
    assert (resumed.state, resumed.reason) == ("running", "resumed by bob")
    sim.step()
    assert [s.device for s in sim.sent] == ["pi4-1"]
    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "completed"


def test_promote_starts_the_next_wave_now(sim: Sim) -> None:
    rid = start(sim)
    sim.step()  # pi4-1 committed; its wave has not baked yet
    promoted = promote_rollout(sim.home, rid, by="carol", reason="looks fine", now=sim.now)
    assert (promoted.state, promoted.current_wave) == ("running", 1)
    assert promoted.reason == "promoted by carol: looks fine"
    assert waves(sim, rid) == [
        ("passed", ["pi4-1"], [], "promoted"),
        ("installing", ["pi4-2", "pi5-1"], [], None),
        ("waiting", [], [], None),
    ]
    assert sim.evaluations(rid) == []  # passed by hand: no gate said so
    sim.step()
    assert sorted(s.device for s in sim.sent) == ["pi4-1", "pi4-2", "pi5-1"]


def test_promote_full_puts_every_remaining_device_in_one_last_wave(sim: Sim) -> None:
    rid = start(sim)
    promote_rollout(sim.home, rid, full=True, by="carol", now=sim.now)
    assert waves(sim, rid) == [
        ("passed", ["pi4-1"], [], "promoted"),
        ("installing", ["pi4-2", "pi5-1", "pi4-3", "pi5-2", "pi5-3"], [], None),
        ("cancelled", [], [], "merged"),
    ]
    assert sim.row_states(rid) == dict.fromkeys(ALL, "pending")
    sim.run_until(lambda: settled(sim, rid))
    assert sim.state(rid) == "completed"
    assert sim.rollout(rid).reason == "wave 2 passed its gates; done"
    # promoting the last wave ends the rollout: nothing is left waiting
    rid2 = start(sim, PLAN.model_copy(update={"waves": ("100%",)}), devices=["pi4-1"])
    done = promote_rollout(sim.home, rid2, by="carol", now=sim.now)
    assert (done.state, done.reason) == ("completed", "promoted by carol")


@pytest.mark.parametrize("when", ["running", "paused"])
def test_abort_sends_every_device_that_took_the_version_back(sim: Sim, when: str) -> None:
    rid = start(sim, PLAN.model_copy(update={"waves": ("2", "100%")}))
    sim.step()  # pi4-1 and pi5-1 committed
    if when == "paused":
        pause_rollout(sim.home, rid, by="alice", now=sim.now)
    aborted = abort_rollout(sim.home, rid, by="dave", reason="pager went off", now=sim.now)
    assert (aborted.state, aborted.reason) == ("rolling_back", "aborted by dave: pager went off")
    # written with the state change, before anything is sent
    assert sim.row_states(rid, kind="rollback") == dict.fromkeys(("pi4-1", "pi5-1"), "pending")
    assert sim.row_states(rid) == {
        n: "committed" if n in ("pi4-1", "pi5-1") else "cancelled" for n in ALL
    }
    assert [(w[0], w[3]) for w in waves(sim, rid)] == [
        ("failed", "aborted"),
        ("cancelled", "cancelled"),
    ]
    sim.run_until(lambda: settled(sim, rid), max_steps=3)
    assert sim.state(rid) == "aborted"
    assert sim.rollout(rid).reason == "aborted by dave: pager went off"
    assert {
        n: b.serving.deployment_id for n, b in sim.boards.items() if b.serving
    } == dict.fromkeys(ALL, sim.v1)
    assert len(sim.sent) == 4  # two manifests, two rollback orders; nothing to the rest


def _revision_and_state(sim: Sim, rollout_id: str) -> tuple[int, str, str]:
    r = sim.rollout(rollout_id)
    return r.revision, r.state, r.reason


@pytest.mark.parametrize(
    ("state", "refused"),
    [
        ("running", ["resume"]),
        ("paused", ["pause"]),
        ("completed", ["pause", "resume", "promote", "abort"]),
        ("aborted", ["pause", "resume", "promote", "abort"]),
    ],
)
def test_impossible_actions_are_refused_and_change_nothing(
    sim: Sim, state: str, refused: list[str]
) -> None:
    rid = start(sim, PLAN.model_copy(update={"waves": ("100%",)}), devices=["pi4-1"])
    if state == "paused":
        pause_rollout(sim.home, rid, by="alice", now=sim.now)
    elif state == "completed":
        promote_rollout(sim.home, rid, by="alice", now=sim.now)
    elif state == "aborted":
        abort_rollout(sim.home, rid, by="alice", now=sim.now)
        sim.tick()  # nothing had been sent: nothing to send back
    assert sim.state(rid) == state
    before = _revision_and_state(sim, rid)
    actions = {
        "pause": pause_rollout,
        "resume": resume_rollout,
        "promote": promote_rollout,
        "abort": abort_rollout,
    }
    for name in refused:
        with pytest.raises(Conflict, match=f"a rollout that is {state} cannot take"):
            actions[name](sim.home, rid, by="mallory", now=sim.now)
        assert _revision_and_state(sim, rid) == before


# -- 7. restart safety ------------------------------------------------------------------


def test_a_daemon_restarted_between_every_tick_carries_on_from_the_registry(
    sim: Sim, home_dir: Path
) -> None:
    rid = start(sim)
    opened: list[Home] = []
    while not settled(sim, rid):
        assert len(opened) < 40
        sim.home = open_home(load_settings(home_dir))  # a new process: only the registry
        opened.append(sim.home)
        sim.step()
        assert sim.tick() == []  # the same tick again changes nothing
    for h in opened:
        h.close()
    assert sim.state(rid) == "completed"
    assert Counter(s.device for s in sim.sent) == dict.fromkeys(ALL, 1)  # nothing sent twice
    assert resend_unconfirmed(sim.home, sim.publish, now=sim.now) == []
    # one judgement per analysis: ticks repeated at the same time store nothing more
    per_tick = Counter((e.wave, e.gate, e.at) for e in sim.evaluations(rid))
    assert set(per_tick.values()) == {1}


# -- 8. compare-and-set ------------------------------------------------------------------


def test_two_daemons_racing_for_one_transition_make_it_once(
    sim: Sim,
    home_dir: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On SQLite the write transactions queue (BEGIN IMMEDIATE) and the second daemon reads
    what the first wrote; on PostgreSQL both read the same revision and the loser's
    compare-and-set fails, taking its gate evaluations and rollback rows with it."""
    caplog.set_level(logging.INFO, logger="edgefleet.controller.rollout")
    postgres = database_url.startswith("postgresql")
    sim.latency_ms["2.0.0"] = 4.0
    rid = start(sim, PLAN.model_copy(update={"waves": ("2", "100%")}))
    sim.step()  # pi4-1 and pi5-1 committed
    sim.now += STEP
    sim.report()
    advance_rollouts(sim.home, now=sim.now)  # their wave bakes
    for _ in range(4):  # past the settle, three intervals a side: the next tick fails it
        sim.now += STEP
        sim.report()
    revision = sim.rollout(rid).revision
    other = open_home(load_settings(home_dir))
    if postgres:
        # make both transactions read the rollout before either writes: a real race
        meet = threading.Barrier(2, timeout=10)
        evidence = advance_module.wave_evidence
        met = threading.local()

        def both_read(*args: object, **kw: object) -> object:
            if not getattr(met, "done", False):  # once: later, the loser waits on row locks
                met.done = True
                meet.wait()
            return evidence(*args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(advance_module, "wave_evidence", both_read)
    start_together = threading.Barrier(2, timeout=10)
    results: list[list[Transition]] = []

    def tick(home: Home) -> None:
        start_together.wait()
        results.append(advance_rollouts(home, now=sim.now))

    threads = [threading.Thread(target=tick, args=(h,)) for h in (sim.home, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    other.close()
    assert len(results) == 2
    moved = [t for r in results for t in r]
    assert [(t.before, t.after) for t in moved] == [("running", "rolling_back")]
    assert sim.rollout(rid).revision == revision + 1
    judged = Counter(e.gate for e in sim.evaluations(rid) if as_utc(e.at) == sim.now)
    assert judged == dict.fromkeys(("install", "latency", "absolute", "errors"), 1)
    assert sim.row_states(rid, kind="rollback") == dict.fromkeys(("pi4-1", "pi5-1"), "pending")
    if postgres:
        assert "it is read again next tick" in caplog.text  # the loser rolled back


def test_compare_and_set_refuses_a_rollout_written_since_it_was_read(sim: Sim) -> None:
    rid = start(sim)
    before = _revision_and_state(sim, rid)
    with (
        pytest.raises(Conflict, match=f"rollout {rid} was changed by another writer"),
        sim.home.session(write=True) as session,
    ):
        rollout = session.exec(select(Rollout).where(Rollout.rollout_id == rid)).one()
        read_at = rollout.revision
        apply_outcome(session, rollout, Outcome.PAUSE, "paused by a loser", sim.now)
        # another writer got there first (its own compare-and-set moved the revision)
        session.execute(
            update(Rollout).where(col(Rollout.id) == rollout.id).values(revision=read_at + 1)
        )
        compare_and_set(session, rollout, read_at)
    assert _revision_and_state(sim, rid) == before  # the loser's transaction rolled back
