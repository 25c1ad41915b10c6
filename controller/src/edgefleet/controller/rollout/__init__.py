"""Rollouts: choosing the target devices and each one's variant, the signed orders, and
sending them (dispatch, and the resend of what the broker never acknowledged); following
a deployment until every device is done."""

from ._dispatch import Dispatched, Publish, dispatch_pending, resend_unconfirmed
from ._orders import build_manifest, deploy_payload
from ._progress import deployment_progress, wait_for_deployment
from ._targets import deploy, new_deployment_id

__all__ = [
    "Dispatched",
    "Publish",
    "build_manifest",
    "deploy",
    "deploy_payload",
    "deployment_progress",
    "dispatch_pending",
    "new_deployment_id",
    "resend_unconfirmed",
    "wait_for_deployment",
]
