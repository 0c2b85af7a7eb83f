"""Moved: the ``/ws`` binding is ``chatd.bindings.websocket``, the session
layer ``chatd.session``.  Kept while callers move over."""

from chatd.bindings.websocket import ChatdServerProtocol, ChatdWebSocketFactory, frame_event

__all__ = ["ChatdServerProtocol", "ChatdWebSocketFactory", "frame_event"]
