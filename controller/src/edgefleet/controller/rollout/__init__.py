"""Rollouts: choosing the target devices and each one's variant, the plan (waves, bake,
gates, maintenance window), the rollout state machine and the daemon's tick that advances
it from the registry, the gate statistics, the signed orders (manifests and rollbacks) and
sending them (dispatch, and the resend of what the broker never acknowledged); following a
deployment until every device is done; what an operator does to a rollout."""

from ._advance import Transition, advance_rollouts
from ._dispatch import BATCH as DISPATCH_BATCH
from ._dispatch import (
    Dispatched,
    Publish,
    PublishMany,
    dispatch_pending,
    one_by_one,
    resend_unconfirmed,
)
from ._engine import TRANSITIONS, Outcome, next_state
from ._gates import (
    Decision,
    DeviceEvidence,
    GateResult,
    absolute_gate,
    error_gate,
    evaluate_gates,
    install_gate,
    latency_gate,
    overall,
)
from ._operate import (
    abort_rollout,
    operator_name,
    pause_rollout,
    promote_rollout,
    resume_rollout,
    roll_back,
)
from ._orders import build_manifest, build_rollback, deploy_payload, rollback_payload
from ._plan import (
    Bake,
    Gates,
    RolloutPlan,
    Window,
    deploy_plan,
    parse_bake,
    parse_duration,
    parse_gate_options,
    parse_waves,
    parse_window,
    spread_order,
)
from ._progress import deployment_progress, wait_for_deployment
from ._reconcile import MAX_RESENDS, Reconciled, reconcile
from ._start import deploy, start_rollout
from ._targets import new_deployment_id, parse_label_selector
from ._views import gate_analysis, list_rollouts, rollout_detail

__all__ = [
    "DISPATCH_BATCH",
    "MAX_RESENDS",
    "TRANSITIONS",
    "Bake",
    "Decision",
    "DeviceEvidence",
    "Dispatched",
    "GateResult",
    "Gates",
    "Outcome",
    "Publish",
    "PublishMany",
    "Reconciled",
    "RolloutPlan",
    "Transition",
    "Window",
    "abort_rollout",
    "absolute_gate",
    "advance_rollouts",
    "build_manifest",
    "build_rollback",
    "deploy",
    "deploy_payload",
    "deploy_plan",
    "deployment_progress",
    "dispatch_pending",
    "error_gate",
    "evaluate_gates",
    "gate_analysis",
    "install_gate",
    "latency_gate",
    "list_rollouts",
    "new_deployment_id",
    "next_state",
    "one_by_one",
    "operator_name",
    "overall",
    "parse_bake",
    "parse_duration",
    "parse_gate_options",
    "parse_label_selector",
    "parse_waves",
    "parse_window",
    "pause_rollout",
    "promote_rollout",
    "reconcile",
    "resend_unconfirmed",
    "resume_rollout",
    "roll_back",
    "rollback_payload",
    "rollout_detail",
    "spread_order",
    "start_rollout",
    "wait_for_deployment",
]
