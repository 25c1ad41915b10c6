"""The agent's store never deletes a model file a record still needs: the active and
previous models, the deployment in progress, a benchmark running. A hostile manifest
naming a kept model's hash with a wrong size fails, and the file (and a later rollback)
survives it."""

from __future__ import annotations

from pathlib import Path

from edgefleet import shared
from edgefleet.agent._store import StateStore
from edgefleet.shared import ArtifactRef, DeviceState
from edgefleet.shared.errors import ChecksumMismatch

from .inprocess import Fleet, inbound

S = DeviceState


def _sha(fleet: Fleet, model: str) -> str:
    return shared.sha256_bytes(fleet.models[model].read_bytes())


def _lying_ref(fleet: Fleet, model: str) -> ArtifactRef:
    """The hash of ``model`` with a size one byte off: what a hostile manifest says."""
    right = fleet.artifact(model)
    return right.model_copy(update={"size": right.size + 1})


def _deployed_v1_then_v2(fleet: Fleet):
    agent = fleet.agent()
    for model in ("v1", "v2"):
        agent.handle(inbound(fleet.deploy(model)[1]))
    assert agent.state.previous is not None and agent.state.previous.sha256 == _sha(fleet, "v1")
    return agent


def test_a_manifest_naming_the_previous_hash_with_a_wrong_size_keeps_the_file(
    fleet: Fleet,
) -> None:
    agent = _deployed_v1_then_v2(fleet)
    kept = agent.store.model_path(_sha(fleet, "v1"))
    deployment_id, payload = fleet.deploy("v3", artifact=_lying_ref(fleet, "v1"))
    agent.handle(inbound(payload))
    assert fleet.link.events(deployment_id)[-1].error_code == ChecksumMismatch.code
    assert kept.exists()
    rollback_id, payload = fleet.rollback()
    agent.handle(inbound(payload))
    assert [e.state for e in fleet.link.events(rollback_id)] == [S.ROLLING_BACK, S.ROLLED_BACK]
    serving = agent.slot.get()
    assert serving is not None and serving.sha256 == _sha(fleet, "v1")


def test_a_manifest_naming_the_active_hash_with_a_wrong_size_keeps_it_serving(
    fleet: Fleet,
) -> None:
    agent = _deployed_v1_then_v2(fleet)
    deployment_id, payload = fleet.deploy("v3", artifact=_lying_ref(fleet, "v2"))
    agent.handle(inbound(payload))
    assert fleet.link.events(deployment_id)[-1].state is S.FAILED
    assert agent.store.model_path(_sha(fleet, "v2")).exists()
    restarted = fleet.agent()
    restarted._load_serving_model()
    serving = restarted.slot.get()
    assert serving is not None and serving.sha256 == _sha(fleet, "v2")


def test_a_benchmark_of_a_kept_model_deletes_nothing(fleet: Fleet) -> None:
    agent = _deployed_v1_then_v2(fleet)
    for model in ("v1", "v2"):
        for artifact in (fleet.artifact(model), _lying_ref(fleet, model)):
            agent.handle(inbound(fleet.benchmark(model, artifact=artifact)[1]))
            assert agent.store.model_path(_sha(fleet, model)).exists()
    rollback_id, payload = fleet.rollback()
    agent.handle(inbound(payload))
    assert fleet.link.events(rollback_id)[-1].state is S.ROLLED_BACK


def test_a_benchmark_of_a_new_model_leaves_no_file(fleet: Fleet) -> None:
    agent = _deployed_v1_then_v2(fleet)
    benchmark_id, payload = fleet.benchmark("v3")
    agent.handle(inbound(payload))
    assert fleet.link.events(benchmark_id)[-1].state is S.BENCHMARKED
    assert not agent.store.model_path(_sha(fleet, "v3")).exists()


def test_a_damaged_stored_file_is_replaced_by_the_next_deploy(fleet: Fleet) -> None:
    agent = fleet.agent()
    agent.handle(inbound(fleet.deploy("v1")[1]))
    stored = agent.store.model_path(_sha(fleet, "v1"))
    stored.write_bytes(bytes(stored.stat().st_size))  # the SD card lost it
    deployment_id, payload = fleet.deploy("v1")
    agent.handle(inbound(payload))
    assert fleet.link.events(deployment_id)[-1].error_code == ChecksumMismatch.code
    deployment_id, payload = fleet.deploy("v1")
    agent.handle(inbound(payload))
    assert fleet.link.events(deployment_id)[-1].state is S.COMMITTED
    assert shared.sha256_file(stored) == _sha(fleet, "v1")


def test_prune_keeps_records_and_held_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = store.load()
    names = {name: f"{i:064x}" for i, name in enumerate(("held", "loose"), start=1)}
    for sha in names.values():
        store.model_path(sha).write_bytes(b"x")
        store.part_path(sha).write_bytes(b"x")
    with store.holding(names["held"]):
        store.prune_models()
        assert not store.remove_model(names["held"])
        assert store.model_path(names["held"]).exists()
        assert store.part_path(names["held"]).exists()
    assert not store.model_path(names["loose"]).exists()
    assert not store.part_path(names["loose"]).exists()
    assert store.remove_model(names["held"])
    assert state.referenced() == set()
