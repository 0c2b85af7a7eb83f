"""Moved to ``chatd.session.lifecycle``; kept while callers move over."""

from chatd.session.lifecycle import Sessions

__all__ = ["Sessions"]
