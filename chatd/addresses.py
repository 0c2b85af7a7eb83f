"""Open connections per client address, for the caps on them: the HTTP
channel's (``max_http_connections_per_ip``) and the sessions'
(``max_connections_per_ip``) count the same way.

A client is counted under its IPv4 address or its IPv6 /64 (one
subscriber usually holds a whole /64, so a cap per IPv6 address would be no
cap); an IPv4-mapped IPv6 address counts as the IPv4 one.  Addresses in
``exempt`` (``ip_limit_exempt``, loopback by default: behind a reverse
proxy on the same host every client arrives from it) and peers without an
IP (a UNIX socket, whose one peer is the local proxy) are not counted.
"""

from __future__ import annotations

import ipaddress

IPV6_PREFIX = 64

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_KEYS_KEPT = 4096
"""Keys remembered per host string: parsing an address and checking the
exempt networks was a fiftieth of a connection's CPU, and most connections
come from few addresses (a proxy, a NAT)."""


class AddressCounts:
    """How many connections each client address has open, held to ``cap``."""

    def __init__(self, cap: int, exempt: tuple[str, ...] = ()) -> None:
        self.cap = cap
        self._exempt: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in exempt)
        self._open: dict[str, int] = {}
        self._keys: dict[str, str | None] = {}

    def key(self, host: str | None) -> str | None:
        """The key a client at ``host`` (an IP address as text) is counted
        under, or None when it is not counted."""
        if host is None:
            return None
        keys = self._keys
        if host in keys:
            return keys[host]
        if len(keys) >= _KEYS_KEPT:
            keys.clear()
        key = keys[host] = self._key(host)
        return key

    def _key(self, host: str) -> str | None:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self._exempt):
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
        return str(ip)

    def acquire(self, key: str) -> bool:
        """Count one more connection for ``key``; False (and nothing
        counted) when it has ``cap`` open already."""
        count = self._open.get(key, 0)
        if count >= self.cap:
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def __getitem__(self, key: str) -> int:
        return self._open.get(key, 0)

    def __len__(self) -> int:
        """Addresses with at least one connection open."""
        return len(self._open)
