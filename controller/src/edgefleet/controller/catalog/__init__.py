"""The model catalog: model versions and the ONNX checks at the door, the variants that
compression records per device profile (measured here or on a device of the profile), and
removing versions and collecting the artifact store's garbage.

Each name is imported from its module on first use (PEP 562): the rollout code and the
CLI's start need ``parse_model_ref`` and friends, not the compression library and numpy
behind ``compress_model_version``."""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:  # the names as type checkers see them; at run time, __getattr__
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

_SOURCES: dict[str, tuple[str, ...]] = {
    "_gc": ("CollectedFile", "GarbageReport", "collect_garbage"),
    "_onnx": ("InspectedModel", "inspect_model", "read_signature", "variant_smoke_test"),
    "_remove": ("ModelRemoval", "remove_model_version"),
    "_variants": ("CompressionResult", "compress_model_version", "load_torch_model"),
    "_versions": (
        "ORIGINAL_VARIANT",
        "add_model",
        "check_name_and_version",
        "find_version",
        "get_model_version",
        "list_models",
        "parse_model_ref",
    ),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}


# hidden from type checkers, which would otherwise accept any name as this __getattr__'s
if not typing.TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _WHERE.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # once found, an ordinary attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


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
