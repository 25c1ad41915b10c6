"""``python -m edgefleet.controller``: the ``edgefleet`` command."""

from ._cli import main

main()
