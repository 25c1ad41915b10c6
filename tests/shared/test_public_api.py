"""The public surface of edgefleet.shared: what `__all__` lists is exactly what is public."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import edgefleet.shared
from edgefleet.harness import public_names, ruff_order
from edgefleet.shared import errors


@pytest.mark.parametrize("module", [edgefleet.shared, errors], ids=lambda m: m.__name__)
def test_all_is_sorted_and_unique(module: ModuleType) -> None:
    names = list(module.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=ruff_order)


@pytest.mark.parametrize("module", [edgefleet.shared, errors], ids=lambda m: m.__name__)
def test_every_name_in_all_exists(module: ModuleType) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module", [edgefleet.shared, errors], ids=lambda m: m.__name__)
def test_every_public_name_is_in_all(module: ModuleType) -> None:
    assert public_names(module) - set(module.__all__) == set()


def _error_classes() -> list[type[errors.EdgefleetError]]:
    classes = [getattr(errors, name) for name in errors.__all__]
    return [c for c in classes if inspect.isclass(c) and issubclass(c, BaseException)]


def test_errors_all_lists_only_error_classes() -> None:
    assert len(_error_classes()) == len(errors.__all__)


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_error_is_an_edgefleet_error_with_a_code(cls: type[errors.EdgefleetError]) -> None:
    assert issubclass(cls, errors.EdgefleetError)
    assert isinstance(cls.code, str)
    assert cls.code.strip()


def test_error_codes_are_distinct() -> None:
    codes = [c.code for c in _error_classes()]
    assert len(codes) == len(set(codes))


def test_error_message_defaults_to_class_name() -> None:
    assert errors.WrongDevice().message == "WrongDevice"
    assert errors.WrongDevice("for rpi-2").message == "for rpi-2"


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (errors.SignatureError, errors.MessageError),
        (errors.UnknownKeyError, errors.SignatureError),
        (errors.WrongDevice, errors.ManifestRejected),
        (errors.ManifestExpired, errors.ManifestRejected),
        (errors.ReplayedSequence, errors.ManifestRejected),
        (errors.ManifestRejected, errors.MessageError),
        (errors.ChecksumMismatch, errors.ArtifactError),
        (errors.SizeExceeded, errors.ArtifactError),
        (errors.SmokeTestFailed, errors.ModelError),
        (errors.NotFound, errors.RegistryError),
    ],
)
def test_error_tree(child: type, parent: type) -> None:
    assert issubclass(child, parent)
