"""The one error `compare` reports to the user: a message and a non-zero exit."""

from __future__ import annotations


class CompareError(Exception):
    """A problem the operator can fix (bad flag, unreachable server, unknown model)."""
