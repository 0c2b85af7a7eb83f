"""What happens when a session authenticates and when it goes away, in one
place, so every binding (native WebSocket, later Socket.IO) opens and
closes sessions the same way."""

from __future__ import annotations

from chatd.domain.chat import ChatService
from chatd.domain.interfaces import Connection, Framer
from chatd.domain.live import LiveService
from chatd.domain.registry import LocalRegistry
from chatd.domain.social import SocialService


class Sessions:
    """The domain's side of a session's life: registry, social, live."""

    def __init__(
        self, registry: LocalRegistry, chat: ChatService, social: SocialService, live: LiveService
    ) -> None:
        self.registry = registry
        self.chat = chat
        self.social = social
        self.live = live

    def opened(self, conn: Connection) -> None:
        """The connection authenticated (its ``authenticated`` push is out)."""
        self.registry.add_connection(conn)
        self.social.connection_opened(conn)

    def framer_switched(self, conn: Connection, previous: Framer) -> None:
        """The connection's binding frames differently from now on (a
        Socket.IO client upgraded from polling to WebSocket)."""
        self.registry.framer_switched(conn, previous)

    def closed(self, conn: Connection) -> None:
        """An authenticated connection is gone or closing."""
        self.live.connection_closed(conn)
        self.registry.remove_connection(conn)
        self.chat.connection_closed(conn)
        self.social.connection_closed(conn)
