"""The one exception tree of edgefleet, shared by the agent and the controller.

    EdgefleetError
    ├── ConfigError                  bad settings file, flag or environment value
    ├── InternalError                a bug; the agent logs it and carries on
    ├── MessageError                 a payload that is not a valid protocol message
    │   ├── SignatureError           signature missing or not matching
    │   │   ├── UnknownKeyError      signed with a key that is not pinned
    │   │   └── KeyRevoked           signed with a key a trust update revoked
    │   └── ManifestRejected         well-signed, but not for us now
    │       ├── WrongDevice
    │       ├── ManifestExpired
    │       ├── ReplayedSequence
    │       └── RollbackMismatch     undoes a deployment the device is not serving
    ├── ArtifactError                the model file
    │   ├── DownloadError            network trouble; worth a retry
    │   ├── SizeExceeded             more bytes than declared
    │   ├── ChecksumMismatch
    │   └── ArtifactMissing          the downloaded file vanished before it was checked
    ├── ModelError                   the model itself
    │   ├── ModelLoadError           ONNX Runtime refused it
    │   ├── ExternalDataError        it points at files outside itself
    │   ├── SignatureMismatch        inputs/outputs differ from the manifest
    │   ├── SmokeTestFailed          wrong answer on the reference sample
    │   ├── CrashedWhileLoading      the agent died loading or testing it
    │   └── InvalidInput             a request that does not fit the model
    │       └── InputTooLarge        more than the model's inputs can hold
    ├── DeploymentError              the lifecycle cannot go on
    │   ├── LoopDetected             a deployment that keeps coming back
    │   ├── NoCandidate              nothing loaded to test
    │   ├── NothingToRollBack        no previous model on the device
    │   ├── Superseded               a newer order replaced it while its download waited
    │   └── DeviceLost               silent past the in-progress timeout (the controller's)
    ├── BrokerError                  MQTT connection trouble
    │   └── DeviceOffline            the device a command needs is not connected
    ├── BenchmarkFailed              no latency figures from a device
    └── RegistryError                the controller's database
        ├── NotFound
        ├── AlreadyExists
        ├── Conflict                 a write broke a constraint (another writer won)
        └── RotationIncomplete       devices have not confirmed the next signing key

Every class has a stable ``code`` that goes into events, exit codes and JSON
output; messages are for people, codes are for programs.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ArtifactError",
    "ArtifactMissing",
    "BenchmarkFailed",
    "BrokerError",
    "ChecksumMismatch",
    "ConfigError",
    "Conflict",
    "CrashedWhileLoading",
    "DeploymentError",
    "DeviceLost",
    "DeviceOffline",
    "DownloadError",
    "EdgefleetError",
    "ExternalDataError",
    "InputTooLarge",
    "InternalError",
    "InvalidInput",
    "KeyRevoked",
    "LoopDetected",
    "ManifestExpired",
    "ManifestRejected",
    "MessageError",
    "ModelError",
    "ModelLoadError",
    "NoCandidate",
    "NotFound",
    "NothingToRollBack",
    "RegistryError",
    "ReplayedSequence",
    "RollbackMismatch",
    "RotationIncomplete",
    "SignatureError",
    "SignatureMismatch",
    "SizeExceeded",
    "SmokeTestFailed",
    "Superseded",
    "UnknownKeyError",
    "WrongDevice",
]


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose."""

    code = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__name__)

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(EdgefleetError):
    code = "config"


class InternalError(EdgefleetError):
    """Something edgefleet did not expect: a bug, reported instead of crashing."""

    code = "internal_error"


class MessageError(EdgefleetError):
    code = "bad_message"


class SignatureError(MessageError):
    code = "bad_signature"


class UnknownKeyError(SignatureError):
    code = "unknown_key"


class KeyRevoked(SignatureError):
    """Signed with a key that a trust update revoked: never trusted again on this device."""

    code = "revoked_key"


class ManifestRejected(MessageError):
    code = "rejected"


class WrongDevice(ManifestRejected):
    code = "wrong_device"


class ManifestExpired(ManifestRejected):
    code = "expired"


class ReplayedSequence(ManifestRejected):
    code = "replayed_sequence"


class RollbackMismatch(ManifestRejected):
    """The rollback undoes a deployment the device is not serving, or the device serves
    nothing (a late or misdirected order): refused before it is accepted, so its sequence
    number is not used up. A device serving the right deployment with no model before it
    accepts the order and fails it as :class:`NothingToRollBack`."""

    code = "rollback_mismatch"


class ArtifactError(EdgefleetError):
    code = "artifact"


class DownloadError(ArtifactError):
    code = "download_failed"


class SizeExceeded(ArtifactError):
    code = "size_exceeded"


class ChecksumMismatch(ArtifactError):
    code = "checksum_mismatch"


class ArtifactMissing(ArtifactError):
    code = "artifact_missing"


class ModelError(EdgefleetError):
    code = "model"


class ModelLoadError(ModelError):
    code = "model_load_failed"


class ExternalDataError(ModelError):
    code = "external_data"


class SignatureMismatch(ModelError):
    code = "io_signature_mismatch"


class SmokeTestFailed(ModelError):
    code = "smoke_test_failed"


class CrashedWhileLoading(ModelError):
    """The agent stopped while the candidate was loaded or tested; it is not tried again,
    so a model that crashes the runtime cannot crash-loop the device."""

    code = "crashed_while_loading"


class InvalidInput(ModelError):
    code = "invalid_input"


class InputTooLarge(InvalidInput):
    """A request bigger than the model's declared input shapes allow (the HTTP layer's 413)."""

    code = "input_too_large"


class DeploymentError(EdgefleetError):
    code = "deployment"


class LoopDetected(DeploymentError):
    """A deployment saved its state too many times without finishing."""

    code = "loop_detected"


class NoCandidate(DeploymentError):
    code = "no_candidate"


class NothingToRollBack(DeploymentError):
    code = "nothing_to_roll_back"


class Superseded(DeploymentError):
    """A newer deploy or rollback order was accepted while this deployment waited to retry
    its download: it ends here, never served, and the newer order runs instead."""

    code = "superseded"


class DeviceLost(DeploymentError):
    """The device went silent past the in-progress timeout after its command. Raised and
    recorded by the controller; an agent never reports it."""

    code = "device_lost"


class BrokerError(EdgefleetError):
    code = "broker"


class DeviceOffline(BrokerError):
    """The device a command needs an answer from is not connected."""

    code = "device_offline"


class BenchmarkFailed(EdgefleetError):
    """A device could not give the latency figures a choice needs."""

    code = "benchmark_failed"


class RegistryError(EdgefleetError):
    code = "registry"


class NotFound(RegistryError):
    code = "not_found"


class AlreadyExists(RegistryError):
    code = "already_exists"


class Conflict(RegistryError):
    """A write the database refused by a constraint, usually because another writer got there
    first; translated from SQLAlchemy's ``IntegrityError`` where sessions are opened."""

    code = "conflict"


class RotationIncomplete(RegistryError):
    """``key rotate --finish`` while devices have not confirmed the next key (see ``--force``)."""

    code = "rotation_incomplete"
