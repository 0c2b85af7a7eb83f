"""The endpoints of the HTTP API: the seed-compatible ``/websocket/…``
ones (same paths and bodies as the Node server chatd replaces).  Each is a
small function over the domain services; pushes travel the broker like
WebSocket events do."""

from __future__ import annotations

from typing import Any

from chatd.clock import iso_from_ms
from chatd.domain.registry import LocalRegistry
from chatd.domain.social import SocialService
from chatd.web.api import ApiError, Call, Endpoint, bad_request, endpoint

CLOSE_BY_ADMIN = 4003


class BackendApi:
    def __init__(self, registry: LocalRegistry, social: SocialService) -> None:
        self.registry = registry
        self.social = social
        self.presence = social.presence
        self.store: Any = social.store

    def endpoints(self) -> list[Endpoint]:
        return [
            endpoint("POST", "/websocket/message/user", self.message_user),
            endpoint("POST", "/websocket/message/users", self.message_users),
            endpoint("POST", "/websocket/message/broadcast", self.broadcast),
            endpoint("POST", "/websocket/notification", self.notification),
            endpoint("GET", "/websocket/users/connected", self.connected),
            endpoint("GET", "/websocket/users/{user_id}/status", self.user_status),
            endpoint("GET", "/websocket/me/status", self.my_status, admin=False),
            endpoint("DELETE", "/websocket/users/{user_id}/disconnect", self.disconnect),
        ]

    # -- pushes ------------------------------------------------------------------------

    @staticmethod
    def _type_and_data(call: Call) -> tuple[str, Any]:
        kind = call.field("type")
        if not kind.strip() or len(kind) > 64:
            raise bad_request("'type' must be 1 to 64 characters")
        if not isinstance(call.body, dict) or "data" not in call.body:
            raise bad_request("'data' is required")
        return kind, call.body["data"]

    def message_user(self, call: Call) -> dict[str, Any]:
        user_id = call.user_id_field("userId")
        kind, data = self._type_and_data(call)
        self.social.push_message([user_id], kind, data)
        return {"delivered": self.presence.connections(user_id)}

    def message_users(self, call: Call) -> dict[str, Any]:
        user_ids = call.field("userIds", list)
        if not user_ids or not all(isinstance(u, str) and u.strip() and len(u) <= 128 for u in user_ids):
            raise bad_request("'userIds' must be a non-empty list of user ids")
        if len(user_ids) > 10000:
            raise bad_request("'userIds' may hold at most 10000 user ids")
        kind, data = self._type_and_data(call)
        unique = list(dict.fromkeys(user_ids))
        self.social.push_message(unique, kind, data)
        return {"delivered": sum(self.presence.connections(u) for u in unique)}

    def broadcast(self, call: Call) -> dict[str, Any]:
        kind, data = self._type_and_data(call)
        self.social.push_message(None, kind, data)
        return {"delivered": self.registry.connection_count()}

    async def notification(self, call: Call) -> dict[str, Any]:
        user_id = call.user_id_field("userId")
        title = call.field("title")
        body = call.field("body")
        data = call.body.get("data")
        if len(title) > 200 or len(body) > 4000:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", "'title' is limited to 200 and 'body' to 4000 characters")
        note = await self.social.notify(user_id, "notification", title, body, data)
        return {"id": note.id, "delivered": self.presence.connections(user_id)}

    # -- who is connected ----------------------------------------------------------------

    def connected(self, call: Call) -> dict[str, Any]:
        users = [
            {"userId": user_id, "connections": len(self.registry.connections_of(user_id))}
            for user_id in sorted(self.registry.online_users())
        ]
        return {"users": users, "count": len(users)}

    async def _status(self, user_id: str) -> dict[str, Any]:
        connections = self.presence.connections(user_id)
        last_seen = None if connections else await self.store.last_seen(user_id)
        return {
            "userId": user_id,
            "online": connections > 0,
            "connections": connections,
            "lastSeen": iso_from_ms(last_seen) if last_seen is not None else None,
        }

    async def user_status(self, call: Call) -> dict[str, Any]:
        return await self._status(call.params["user_id"])

    async def my_status(self, call: Call) -> dict[str, Any]:
        if call.caller.user_id is None:
            raise bad_request("the API key is not a user; use a user's token")
        return await self._status(call.caller.user_id)

    def disconnect(self, call: Call) -> dict[str, Any]:
        connections = self.registry.connections_of(call.params["user_id"])
        for conn in connections:
            conn.disconnect(CLOSE_BY_ADMIN, "disconnected by an administrator")
        return {"disconnected": len(connections)}
