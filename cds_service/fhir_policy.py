"""Which ``fhirServer`` the service may call back, for which caller: the service must not become a tool
for reaching hosts its callers should not reach (SSRF) or for sending an access token somewhere else.

Outside dev, a server must match an entry of the calling issuer's ``fhir_servers``:

- ``https://fhir.example.org/r4``: that server (and paths under it). Listing it is the explicit consent, so
  it may sit on a private address (hospital FHIR servers often do). ``http://`` is accepted only for a server
  on this machine (``127.0.0.1``, ``localhost``, ``[::1]``): the token never leaves the host.
- ``https://*.example.org/r4`` or ``https://*``: any such host (on any port, unless the entry names one), but
  only if every address it resolves to is a public one; loopback, private, link-local, shared and reserved
  addresses are refused.

In dev (no caller authentication) any https server on a public address, or http/https on loopback, is
allowed. URLs with credentials, query, fragment, dot segments or encoded separators are always refused.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as LookupTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

from cds_service.auth import Caller

REFUSED = "fhirServer is not allowed for this caller"
"""What the caller may learn (412 OperationOutcome and card notes); the detail goes to the log only."""
DEFAULT_PORTS = {"https": 443, "http": 80}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_BAD_PATH = re.compile(r"%2e|%2f|%5c|\\", re.IGNORECASE)

Resolver = Callable[[str, int | None], Iterable[str]]
_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns")
"""DNS lookups have no timeout of their own: they run here so a hanging resolver cannot hold a request."""


def resolve(host: str, port: int | None) -> list[str]:
    """Every address ``host`` resolves to (as the HTTP client would connect to one of them)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


@dataclass(frozen=True)
class Refusal:
    reason: str
    """Why, for the log: never includes a token or the URL's path."""
    host: str | None = None
    public: str = REFUSED


@dataclass(frozen=True)
class ServerUrl:
    scheme: str
    host: str
    port: int | None
    """None only in a wildcard entry without a port: any port."""
    path: str

    @classmethod
    def parse(cls, url: str, *, pattern: bool = False) -> ServerUrl | None:
        """The parts of a plain http(s) base URL, else None; an allowlist ``pattern`` may use ``*``."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        host = (parts.hostname or "").lower()
        if parts.scheme not in DEFAULT_PORTS or not host or parts.username is not None or parts.password:
            return None
        if parts.query or parts.fragment or "?" in url or "#" in url or _BAD_PATH.search(parts.path):
            return None
        if any(segment in (".", "..") for segment in parts.path.split("/")):
            return None
        bare = host.removeprefix("*.") if pattern and host != "*" else host
        if not (_HOST.match(bare) or _ip(bare) or (pattern and host == "*")):
            return None
        if port is None and not (pattern and host.startswith("*")):
            port = DEFAULT_PORTS[parts.scheme]
        return cls(parts.scheme, host, port, parts.path.rstrip("/"))

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*")

    def covers(self, other: ServerUrl) -> bool:
        """Whether this allowlist entry admits ``other`` (a concrete URL)."""
        if self.scheme != other.scheme or self.port not in (None, other.port):
            return False
        if self.host == "*":
            host_ok = True
        elif self.host.startswith("*."):
            host_ok = other.host.endswith(self.host[1:]) and len(other.host) > len(self.host) - 1
        else:
            host_ok = self.host == other.host
        path_ok = other.path == self.path or other.path.startswith(self.path + "/")
        return host_ok and path_ok


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and may be routed to: NAT64 (64:ff9b::/96), 6to4 (2002::/16),
    IPv4-compatible (::a.b.c.d). ``::`` and ``::1`` carry none."""
    if ip.version != 6:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64 or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(address: str) -> bool:
    """A global unicast address, and so is any IPv4 address it embeds (``64:ff9b::7f00:1`` is 127.0.0.1)."""
    ip = _ip(address)
    if ip is None or not ip.is_global or ip.is_multicast:
        return False
    inner = embedded_ipv4(ip)
    return inner is None or (inner.is_global and not inner.is_multicast)


def is_loopback(address: str) -> bool:
    ip = _ip(address)
    return ip is not None and ip.is_loopback


class FhirPolicy:
    def __init__(self, dev: bool, resolver: Resolver = resolve):
        self.dev = dev
        self.resolver = resolver

    def refusal(self, url: str, caller: Caller | None, timeout: float = 2.0) -> Refusal | None:
        """Why the service will not call ``url`` for ``caller``, or None if it may; DNS gets ``timeout`` s."""
        target = ServerUrl.parse(url)
        if target is None:
            return Refusal("fhirServer is not a plain http(s) base URL")
        if caller is not None:
            return self._for_caller(target, caller, timeout)
        if not self.dev:
            return Refusal("no authenticated caller", target.host)
        return self._public_only(target, timeout, allow_loopback=True, loopback_only=target.scheme == "http")

    def _for_caller(self, target: ServerUrl, caller: Caller, timeout: float) -> Refusal | None:
        parsed = (ServerUrl.parse(url, pattern=True) for url in caller.trusted.fhir_servers)
        entries = [entry for entry in parsed if entry is not None]
        exact = [e for e in entries if not e.wildcard and e.covers(target)]
        if exact:
            if target.scheme == "http" and target.host not in LOOPBACK_NAMES:
                return Refusal("plain http is allowed only on loopback", target.host)
            return None
        if any(e.covers(target) for e in entries if e.wildcard):
            if target.scheme != "https":
                return Refusal("wildcard entries allow https only", target.host)
            return self._public_only(target, timeout, allow_loopback=False)
        if _ip(target.host) is not None and not is_public(target.host):
            return Refusal("fhirServer is a private, loopback or link-local address", target.host)
        return Refusal("fhirServer is not on the issuer's fhir_servers allowlist", target.host)

    def _public_only(
        self, target: ServerUrl, timeout: float, allow_loopback: bool, loopback_only: bool = False
    ) -> Refusal | None:
        """Resolve the host; refuse unless every address is public (or loopback, when allowed)."""
        try:
            addresses = list(_LOOKUPS.submit(self.resolver, target.host, target.port).result(max(timeout, 0)))
        except LookupTimeout:
            return Refusal("fhirServer host did not resolve within the deadline", target.host)
        except OSError:
            return Refusal("fhirServer host does not resolve", target.host)
        if not addresses:
            return Refusal("fhirServer host does not resolve", target.host)
        for address in addresses:
            if allow_loopback and is_loopback(address):
                continue
            if loopback_only:
                return Refusal("plain http is allowed only on loopback", target.host)
            if not is_public(address):
                return Refusal("fhirServer resolves to a non-public address", target.host)
        return None
