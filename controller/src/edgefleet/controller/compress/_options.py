"""The knobs of the compression passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._onnx_passes import CALIBRATION_METHODS, CalibrationMethodName


@dataclass(frozen=True)
class PassOptions:
    """Knobs of the passes; the defaults suit small vision models."""

    prune_ratio: float = 0.5
    prune_epochs: int = 20
    distill_epochs: int = 30
    distill_temperature: float = 4.0
    distill_alpha: float = 0.7
    distill_lr: float = 1e-4  # a multi-input (transformer) student, started from the teacher
    graph_opt_level: Literal["basic", "extended"] = "basic"
    calibration_methods: tuple[CalibrationMethodName, ...] = CALIBRATION_METHODS
    per_channel: tuple[bool, ...] = (False, True)
    reduce_range: bool | None = None  # None: decided by the profile's ISA features
