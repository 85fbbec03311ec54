"""Who the client is, as couchgate sees it: its address, scheme and host.

The peer of the TCP connection is the client, unless the peer is one of the proxies named
in `COUCHGATE_TRUSTED_PROXIES`: only then are its `X-Forwarded-For`, `-Proto` and `-Host`
believed. The client address is the right-most `X-Forwarded-For` entry that is not itself
a trusted proxy (entries left of it were written by the client and prove nothing). A
client that is not a trusted proxy cannot change what couchgate thinks of it by sending
these headers. The view is what the throttle, the connection cap, the audit log and the
`X-Forwarded-*` headers sent to CouchDB use.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp import web

from proxy.keys import SETTINGS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A host header value: a name or an address, and an optional port; nothing else.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


@dataclass(frozen=True)
class ClientView:
    address: str | None  # the client's address (None only for sockets without one)
    scheme: str  # "http" or "https": how the client reached couchgate
    host: str | None  # the public host the client used, when couchgate knows it from config or a proxy


CLIENT_VIEW = web.RequestKey("client_view", ClientView)


@lru_cache(maxsize=16)
def networks(items: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def is_trusted(address: str | None, trusted: Iterable[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def forwarded_client(peer: str, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The right-most address in the chain (peer last) that is not a trusted proxy."""
    chain = [part.strip() for value in forwarded_for for part in value.split(",") if part.strip()]
    for hop in reversed(chain):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a hop that is no address: the chain cannot be read, trust the peer only
        if not is_trusted(hop, trusted):
            return hop
    return chain[0] if chain else peer


def client_view(request: web.Request) -> ClientView:
    """This request's client (computed once per request)."""
    known: ClientView | None = request.get(CLIENT_VIEW)
    if known is not None:
        return known
    settings = request.app.get(SETTINGS)
    peer = request.remote
    scheme = "https" if request.secure else "http"
    address, host = peer, None
    trusted = networks(settings.trusted_proxies) if settings is not None else ()
    if peer and trusted and is_trusted(peer, trusted):
        address = forwarded_client(peer, request.headers.getall("X-Forwarded-For", []), trusted)
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded_host = request.headers.get("X-Forwarded-Host", "").split(",")[-1].strip()
        if _HOST.match(forwarded_host):
            host = forwarded_host
    public = settings.public_url if settings is not None else None
    if public is not None:
        parts = urlsplit(str(public))
        scheme, host = parts.scheme, parts.netloc.rpartition("@")[2]
    view = ClientView(address, scheme, host)
    request[CLIENT_VIEW] = view
    return view


def client_address(request: web.Request) -> str | None:
    return client_view(request).address
