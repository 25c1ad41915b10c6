"""The ``edgefleet`` command line: one module per noun over the service functions, with
rendering in one place (``_render``)."""

from . import (  # noqa: F401
    _admin,
    _compress,
    _deploy,
    _device,
    _housekeeping,
    _key,
    _model,
    _profile,
    _rollout_actions,
    _serve,
    _status,
    _tls,
)
from ._app import EXIT_FAILURE, EXIT_USAGE, app
from ._rollout import EXIT_IN_PROGRESS


def main() -> None:
    app()


__all__ = ["EXIT_FAILURE", "EXIT_IN_PROGRESS", "EXIT_USAGE", "app", "main"]
