"""The model catalog: model versions and the ONNX checks at the door, and the variants that
compression records per device profile (measured here or on a device of the profile)."""

from ._onnx import InspectedModel, inspect_model, read_signature, variant_smoke_test
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
    "CompressionResult",
    "InspectedModel",
    "add_model",
    "check_name_and_version",
    "compress_model_version",
    "find_version",
    "get_model_version",
    "inspect_model",
    "list_models",
    "load_torch_model",
    "parse_model_ref",
    "read_signature",
    "variant_smoke_test",
]
