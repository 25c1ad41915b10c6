"""The one exception tree of edgefleet, shared by the agent and the controller.

    EdgefleetError
    ├── ConfigError                  bad settings file, flag or environment value
    ├── MessageError                 a payload that is not a valid protocol message
    │   ├── SignatureError           signature missing or not matching
    │   │   └── UnknownKeyError      signed with a key that is not pinned
    │   └── ManifestRejected         well-signed, but not for us now
    │       ├── WrongDevice
    │       ├── ManifestExpired
    │       └── ReplayedSequence
    ├── ArtifactError                the model file
    │   ├── DownloadError            network trouble; worth a retry
    │   ├── SizeExceeded             more bytes than declared
    │   └── ChecksumMismatch
    ├── ModelError                   the model itself
    │   ├── ModelLoadError           ONNX Runtime refused it
    │   ├── ExternalDataError        it points at files outside itself
    │   ├── SignatureMismatch        inputs/outputs differ from the manifest
    │   ├── SmokeTestFailed          wrong answer on the reference sample
    │   └── InvalidInput             a request that does not fit the model
    ├── BrokerError                  MQTT connection trouble
    └── RegistryError                the controller's database
        ├── NotFound
        └── AlreadyExists

Every class has a stable ``code`` that goes into events, exit codes and JSON
output; messages are for people, codes are for programs.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ArtifactError",
    "BenchmarkFailed",
    "BrokerError",
    "ChecksumMismatch",
    "ConfigError",
    "DeviceOffline",
    "DownloadError",
    "EdgefleetError",
    "ExternalDataError",
    "InvalidInput",
    "ManifestExpired",
    "ManifestRejected",
    "MessageError",
    "ModelError",
    "ModelLoadError",
    "NotFound",
    "RegistryError",
    "ReplayedSequence",
    "SignatureError",
    "SignatureMismatch",
    "SizeExceeded",
    "SmokeTestFailed",
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


class MessageError(EdgefleetError):
    code = "bad_message"


class SignatureError(MessageError):
    code = "bad_signature"


class UnknownKeyError(SignatureError):
    code = "unknown_key"


class ManifestRejected(MessageError):
    code = "rejected"


class WrongDevice(ManifestRejected):
    code = "wrong_device"


class ManifestExpired(ManifestRejected):
    code = "expired"


class ReplayedSequence(ManifestRejected):
    code = "replayed_sequence"


class ArtifactError(EdgefleetError):
    code = "artifact"


class DownloadError(ArtifactError):
    code = "download_failed"


class SizeExceeded(ArtifactError):
    code = "size_exceeded"


class ChecksumMismatch(ArtifactError):
    code = "checksum_mismatch"


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


class InvalidInput(ModelError):
    code = "invalid_input"


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
