"""The read API answers only requests naming a host it is served under (`HTTP_ALLOWED_HOSTS`).

It has no authentication and sends no CORS headers, so a page of another site cannot read it
from a browser, but only while the browser takes that site's name for another origin: a site
whose name its own DNS then points at the service's address (DNS rebinding) has its page's
requests reach the service as same-origin, under the site's own name in `Host`, and reads the
alerts and the schools' records through the browser of a visitor inside the network (security
audit s69 F1). A name the deployment did not list is refused (400); an IP address is not a name
a site can point elsewhere, and is served (kubelet's probes and Prometheus name the pod by its
address), as are a request without `Host` (no browser sends one) and the probes' paths, which
say nothing of the établissements."""

import ipaddress
import json
from collections.abc import Iterable
from typing import Any

import structlog

from services.common.runtime.outages import EveryFew

log = structlog.get_logger(__name__)

PROBES = frozenset({"/livez", "/readyz", "/health", "/metrics"})
_REFUSAL = json.dumps(
    {
        "detail": "hôte non servi : l'en-tête Host nomme un hôte que HTTP_ALLOWED_HOSTS ne liste pas "
        "(la protection de l'API contre le DNS rebinding) ; ajouter à ce réglage le nom sous lequel "
        "le service est servi"
    },
    ensure_ascii=False,
).encode()


def host_name(header: str) -> str:
    """The host a `Host` header names, without its port, brackets or final dot, in lower case."""
    host = header.strip().lower()
    if host.startswith("["):  # an IPv6 address, [::1]:8000
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AllowedHosts:
    """ASGI middleware: 400 for an HTTP request whose `Host` names a host other than `names`
    (each a name, or `*.suffix` for any name under it), an IP address, or none."""

    def __init__(self, app: Any, names: Iterable[str]) -> None:
        self.app = app
        listed = [host_name(n) for n in names]
        self._exact = frozenset(n for n in listed if not n.startswith("*."))
        self._suffixes = tuple(n[1:] for n in listed if n.startswith("*."))  # ".svc"
        self._line = EveryFew()  # a scan's names, one a request: a line every 10 s, not one each

    def allows(self, host: str) -> bool:
        return host in self._exact or host.endswith(self._suffixes) or _is_address(host)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        header = next((value for name, value in scope["headers"] if name == b"host"), None)
        if header is None or self.allows(host := host_name(header.decode("latin-1"))):
            return await self.app(scope, receive, send)
        self._line.say(
            log.warning,
            "http.hote_refuse",
            host=host[:253] if host.isascii() and host.isprintable() else ascii(host[:253]),
            hint="a name the service is served under (a proxy's, an ingress'): add it to HTTP_ALLOWED_HOSTS",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_REFUSAL)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _REFUSAL})
