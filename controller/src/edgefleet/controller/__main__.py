"""``python -m edgefleet.controller``: the ``edgefleet`` command."""

from .cli import main

main()
