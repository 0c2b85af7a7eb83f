"""The endpoints of the HTTP API: the seed-compatible ``/websocket/…``
ones (same paths and bodies as the Node server chatd replaces) and the
native ``/api/…`` ones.

Each endpoint parses its request and calls one domain method, the same
code a WebSocket request runs, so pushes, notifications and limits cannot
differ between the two ways in.  Nothing here touches the store."""

from __future__ import annotations

from typing import Any

from chatd.clock import iso_from_ms
from chatd.domain.chat import ChatService, is_direct_room
from chatd.domain.live import LiveService
from chatd.domain.models import ROOM_TYPES, Limits, Published
from chatd.domain.registry import LocalRegistry, user_channel
from chatd.domain.social import SocialService
from chatd.web.api import (
    MAX_ID,
    ApiError,
    Call,
    Endpoint,
    bad_request,
    endpoint,
    query_integer,
)

CLOSE_BY_ADMIN = 4003
DISCONNECT_CONTROL = "chatd:disconnect"
"""Control event on a user's channel: every node closes the user's
connections with 4003."""


class BackendApi:
    """Counts (``delivered``, ``connections``) are cluster-wide: they come
    from the presence tracker, which asks Redis when there is a cluster."""

    def __init__(self, registry: LocalRegistry, social: SocialService, limits: Limits) -> None:
        self.registry = registry
        self.social = social
        self.presence = social.presence
        self.limits = limits
        registry.on_control(DISCONNECT_CONTROL, self._disconnect_control)

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

    async def _delivered(self, user_ids: list[str]) -> int:
        counts = await self.presence.connection_counts(user_ids)
        return sum(counts.values())

    async def message_user(self, call: Call) -> dict[str, Any]:
        user_id = call.user_id_field("userId")
        kind, data = self._type_and_data(call)
        self.social.push_message([user_id], kind, data)
        return {"delivered": await self._delivered([user_id])}

    async def message_users(self, call: Call) -> dict[str, Any]:
        user_ids = call.field("userIds", list)
        if not user_ids or not all(_is_user_id(u) for u in user_ids):
            raise bad_request("'userIds' must be a non-empty list of user ids")
        self.limits.check_recipients(len(user_ids))
        kind, data = self._type_and_data(call)
        unique = list(dict.fromkeys(user_ids))
        self.social.push_message(unique, kind, data)
        return {"delivered": await self._delivered(unique)}

    async def broadcast(self, call: Call) -> dict[str, Any]:
        kind, data = self._type_and_data(call)
        self.social.push_message(None, kind, data)
        return {"delivered": await self.presence.total_connections()}

    async def notification(self, call: Call) -> dict[str, Any]:
        user_id = call.user_id_field("userId")
        title = call.field("title")
        body = call.field("body")
        data = call.body.get("data")
        self.limits.check_notification(title, body)
        note = await self.social.notify(user_id, "notification", title, body, data)
        return {"id": note.id, "delivered": await self._delivered([user_id])}

    # -- who is connected ----------------------------------------------------------------

    async def connected(self, call: Call) -> dict[str, Any]:
        counts = await self.presence.connected_users()
        users = [{"userId": user_id, "connections": counts[user_id]} for user_id in sorted(counts)]
        return {"users": users, "count": len(users)}

    async def _status(self, user_id: str) -> dict[str, Any]:
        """The story the presence pushes tell: a user stays online through
        the grace period after the last connection closes (a page reload),
        with ``connections`` 0 meanwhile, and has a ``lastSeen`` once the
        ``user:offline`` push has gone out."""
        connections = (await self.presence.connection_counts([user_id])).get(user_id, 0)
        online = connections > 0 or self.presence.is_online(user_id)
        last_seen = None if online else await self.social.last_seen(user_id)
        return {
            "userId": user_id,
            "online": online,
            "connections": connections,
            "lastSeen": iso_from_ms(last_seen) if last_seen is not None else None,
        }

    async def user_status(self, call: Call) -> dict[str, Any]:
        return await self._status(call.params["user_id"])

    async def my_status(self, call: Call) -> dict[str, Any]:
        if call.requester.user_id is None:
            raise bad_request("the API key is not a user; use a user's token")
        return await self._status(call.requester.user_id)

    async def disconnect(self, call: Call) -> dict[str, Any]:
        user_id = call.params["user_id"]
        connections = (await self.presence.connection_counts([user_id])).get(user_id, 0)
        self.social.chat.publish(user_channel(user_id), Published(DISCONNECT_CONTROL, b"{}"))
        return {"disconnected": connections}

    def _disconnect_control(self, channel: str, event: Published) -> None:
        for conn in self.registry.connections_of(channel[len("user:") :]):
            conn.disconnect(CLOSE_BY_ADMIN, "disconnected by an administrator")


class NativeApi:
    """``/api/…``: rooms, members, history, posting as a user, the friend
    graph and streams, managed by the backend."""

    def __init__(self, chat: ChatService, social: SocialService, live: LiveService) -> None:
        self.chat = chat
        self.social = social
        self.live = live

    def endpoints(self) -> list[Endpoint]:
        return [
            endpoint("POST", "/api/rooms", self.create_room),
            endpoint("GET", "/api/rooms/{room_id}", self.get_room, admin=False),
            endpoint("PUT", "/api/rooms/{room_id}/members/{user_id}", self.add_member),
            endpoint("DELETE", "/api/rooms/{room_id}/members/{user_id}", self.remove_member),
            endpoint("GET", "/api/rooms/{room_id}/messages", self.history, admin=False),
            endpoint("POST", "/api/rooms/{room_id}/messages", self.post_message),
            endpoint("PUT", "/api/friendships/{user_a}/{user_b}", self.befriend),
            endpoint("DELETE", "/api/friendships/{user_a}/{user_b}", self.unfriend),
            endpoint("POST", "/api/friend-requests", self.request_friend),
            endpoint("PUT", "/api/streams/{stream_id}", self.put_stream),
        ]

    def _reader(self, call: Call) -> str | None:
        """Whose membership a read needs: none for an admin, else the user's."""
        return None if call.requester.is_admin else call.requester.user_id

    async def create_room(self, call: Call) -> dict[str, Any]:
        room_id = call.field("id", required=False)
        if room_id is not None and (
            not room_id.strip()
            or len(room_id) > MAX_ID
            or "/" in room_id
            or is_direct_room(room_id)
        ):
            raise bad_request(
                f"'id' must be 1 to {MAX_ID} characters without '/' and must not start with 'dm_'"
            )
        name = call.field("name")
        if not name.strip():
            raise bad_request("'name' must not be empty")
        description = call.field("description", required=False) or ""
        room_type = call.field("type")
        if room_type not in ROOM_TYPES:
            raise bad_request('\'type\' must be "public" or "private"')
        members = call.field("members", list, required=False) or []
        if not all(_is_user_id(m) for m in members):
            raise bad_request("'members' must be a list of user ids")
        room = await self.chat.create_room_for_backend(
            room_id, name, description, room_type, members
        )
        if room is None:
            raise ApiError(409, "CONFLICT", f"room {room_id} exists already")
        return {"room": room.to_wire()}

    async def get_room(self, call: Call) -> dict[str, Any]:
        room = await self.chat.room(call.params["room_id"], self._reader(call))
        members = await self.chat.members(room.id)
        return {"room": room.to_wire(), "members": members}

    async def add_member(self, call: Call) -> dict[str, Any]:
        added = await self.chat.add_member(call.params["room_id"], call.params["user_id"])
        return {"added": added}

    async def remove_member(self, call: Call) -> dict[str, Any]:
        removed, left = await self.chat.remove_member(
            call.params["room_id"], call.params["user_id"]
        )
        return {"removed": removed, "connectionsLeft": left}

    async def history(self, call: Call) -> dict[str, Any]:
        room = await self.chat.room(call.params["room_id"], self._reader(call))
        before = query_integer(call, "before")
        after = query_integer(call, "after")
        limit = query_integer(call, "limit") or 50
        page = await self.chat.page(room.id, before, after, limit)
        return {"messages": [m.to_wire() for m in page.messages], "hasMore": page.has_more}

    async def post_message(self, call: Call) -> dict[str, Any]:
        user_id = call.user_id_field("userId")
        content = call.field("content")
        message = await self.chat.post_for_backend(user_id, call.params["room_id"], content)
        return {"message": message}

    async def befriend(self, call: Call) -> dict[str, Any]:
        created = await self.social.set_friendship(*_pair(call), True)
        return {"friends": True, "created": created}

    async def unfriend(self, call: Call) -> dict[str, Any]:
        removed = await self.social.set_friendship(*_pair(call), False)
        return {"friends": False, "removed": removed}

    async def request_friend(self, call: Call) -> dict[str, Any]:
        """A friend request made in the backend (seed 000's apps): the same
        as ``fromUserId``'s ``friend:request``, so ``toUserId`` gets the
        push now or the notification on connecting.  ``status`` says what
        happened, as the table of protocol.md section 5.14 does."""
        from_user = call.user_id_field("fromUserId")
        to_user = call.user_id_field("toUserId")
        if from_user == to_user:
            raise bad_request("'fromUserId' and 'toUserId' must be different users")
        status = await self.social.request_friend_for_backend(from_user, to_user)
        return {"fromUserId": from_user, "toUserId": to_user, "status": status}

    async def put_stream(self, call: Call) -> dict[str, Any]:
        stream_id = call.params["stream_id"]
        host = call.user_id_field("hostId")
        title = call.field("title", required=False)
        if title is not None and len(title) > 200:
            raise bad_request("'title' is longer than 200 characters")
        host, status, title = await self.live.put_stream(stream_id, host, title)
        return {"streamId": stream_id, "hostId": host, "status": status, "title": title}


def _is_user_id(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and len(value) <= MAX_ID


def _pair(call: Call) -> tuple[str, str]:
    a, b = call.params["user_a"], call.params["user_b"]
    if a == b:
        raise bad_request("a friendship needs two different users")
    return a, b
