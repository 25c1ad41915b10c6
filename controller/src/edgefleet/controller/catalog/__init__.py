"""The model catalog: model versions and the ONNX checks at the door, the variants that
compression records per device profile (measured here or on a device of the profile), and
removing versions and collecting the artifact store's garbage."""

from ._gc import CollectedFile, GarbageReport, collect_garbage
from ._onnx import InspectedModel, inspect_model, read_signature, variant_smoke_test
from ._remove import ModelRemoval, remove_model_version
from ._variants import CompressionResult, compress_model_version, load_torch_model
from ._versions import (
    ORIGINAL_VARIANT,
    add_model,
    check_name_and_version,
    find_version,
    get_model_version,
    list_models,
    parse_model_ref,
)

__all__ = [
    "ORIGINAL_VARIANT",
    "CollectedFile",
    "CompressionResult",
    "GarbageReport",
    "InspectedModel",
    "ModelRemoval",
    "add_model",
    "check_name_and_version",
    "collect_garbage",
    "compress_model_version",
    "find_version",
    "get_model_version",
    "inspect_model",
    "list_models",
    "load_torch_model",
    "parse_model_ref",
    "read_signature",
    "remove_model_version",
    "variant_smoke_test",
]
