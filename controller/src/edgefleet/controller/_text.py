"""Small text helpers for messages."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its class name when empty), for one-line errors
    that wrap a library's long multi-line ones."""
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0][:limit]
