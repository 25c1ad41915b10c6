"""The fleet page and its JSON API (``/api/v1/...``), read-only, for operators and scripts.

A request is answered by ``FleetWeb.answer`` from its method, path, query, headers and the
peer's address, so the rules are testable without a socket; ``_http`` writes the answer.

- Only peers in ``web_allow`` (loopback unless configured) reach any of it; others get 404.
- The API takes the operator token as ``Authorization: Bearer``; the page's login form
  (``POST /login``) checks it once and sets an HttpOnly, SameSite=Strict cookie holding a
  digest of the token, never the token itself. No token configured: 403, saying so.
- Responses forbid framing, sniffing and caching; the page's script and style come from
  this server only (a strict Content-Security-Policy).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel

from edgefleet.shared.errors import ConfigError, EdgefleetError

from ..fleet import LatencyHistory, deployment_views, fleet_overview, list_events
from ..home import Home

log = logging.getLogger("edgefleet.controller.web")

COOKIE = "edgefleet_operator"
MAX_FORM_BYTES = 4096
_SECURITY = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_ASSETS = {
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}
_JSON = "application/json"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _BadRequest(Exception):
    """A query parameter out of its bounds, or a deployment that does not exist: 400."""


@dataclass(frozen=True)
class WebAnswer:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def web_networks(web_allow: str) -> list[Network]:
    """``web_allow`` parsed (comma-separated addresses or networks)."""
    networks: list[Network] = []
    for entry in (e.strip() for e in web_allow.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"web_allow: {entry!r} is not an address or network") from None
    return networks


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("web", name).read_bytes()


class FleetWeb:
    """Routes ``/``, ``/login``, ``/ui/*`` and ``/api/v1/*``; ``wants`` says which paths."""

    def __init__(self, home: Home, *, secure_cookie: bool = False) -> None:
        self.home = home
        self.token = home.settings.operator_token
        self.networks = web_networks(home.settings.web_allow)
        self.secure_cookie = secure_cookie
        self._session = _digest(self.token) if self.token else ""
        self.latency = LatencyHistory(home)
        self._api: dict[str, Callable[[dict[str, str]], Any]] = {
            "/api/v1/status": self._status,
            "/api/v1/deployments": self._deployments,
            "/api/v1/latency": self._latency,
            "/api/v1/events": self._events,
        }

    @staticmethod
    def wants(path: str) -> bool:
        return path in ("/", "/login", "/logout", "/favicon.ico") or path.startswith(
            ("/ui/", "/api/")
        )

    def answer(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        peer: str,
        form: bytes = b"",
    ) -> WebAnswer:
        if not self._allowed(peer):
            return WebAnswer(HTTPStatus.NOT_FOUND, b"not found\n")
        if path == "/favicon.ico":  # browsers ask for it on every page, JSON ones too
            return _secure(WebAnswer(HTTPStatus.NO_CONTENT, b""))
        if path in _ASSETS:
            name, kind = _ASSETS[path]
            return _secure(WebAnswer(HTTPStatus.OK, _asset(name), kind))
        if not self.token:
            return _secure(
                WebAnswer(
                    HTTPStatus.FORBIDDEN,
                    b"no operator_token in config.toml: add one (any long random string) "
                    b"and restart `edgefleet serve`\n",
                )
            )
        if path == "/login" and method == "POST":
            return self._login(form)
        if path == "/logout":
            return _secure(_redirect("/", cookie=self._cookie("", max_age=0)))
        authorised = self._authorised(headers)
        if path == "/":
            page = "index.html" if authorised else "login.html"
            return _secure(WebAnswer(HTTPStatus.OK, _asset(page), "text/html; charset=utf-8"))
        handler = self._api.get(path) if method in ("GET", "HEAD") else None
        if handler is None and path.startswith("/api/v1/deployments/"):
            dep = path.removeprefix("/api/v1/deployments/")
            handler = self._deployment(dep)
        if handler is None:
            return _secure(_json(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"}))
        if not authorised:
            answer = _json(HTTPStatus.UNAUTHORIZED, {"error": "the operator token is required"})
            answer.headers["WWW-Authenticate"] = 'Bearer realm="edgefleet"'
            return _secure(answer)
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            return _secure(_json(HTTPStatus.OK, handler(params)))
        except _BadRequest as exc:
            return _secure(_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)}))
        except EdgefleetError as exc:
            log.error("%s: %s", path, exc)
            return _secure(_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "try again later"}))

    # -- who -------------------------------------------------------------------------------

    def _allowed(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def _authorised(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return hmac.compare_digest(_digest(token.strip()), self._session)
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value:
                return hmac.compare_digest(value, self._session)
        return False

    def _login(self, form: bytes) -> WebAnswer:
        fields = parse_qs(form.decode("utf-8", "replace"))
        token = (fields.get("token") or [""])[-1].strip()
        if token and hmac.compare_digest(_digest(token), self._session):
            return _secure(_redirect("/", cookie=self._cookie(self._session)))
        page = _asset("login.html").replace(b"<!--error-->", b"<p class=error>Wrong token.</p>")
        return _secure(WebAnswer(HTTPStatus.UNAUTHORIZED, page, "text/html; charset=utf-8"))

    def _cookie(self, value: str, max_age: int = 12 * 3600) -> str:
        secure = "; Secure" if self.secure_cookie else ""
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"

    # -- what ------------------------------------------------------------------------------

    def _status(self, params: dict[str, str]) -> BaseModel:
        online = {"true": True, "false": False, "": None}.get(params.get("online", ""))
        return fleet_overview(
            self.home,
            online=online,
            profile=params.get("profile") or None,
            search=params.get("q") or None,
        )

    def _deployments(self, params: dict[str, str]) -> list[BaseModel]:
        return list(deployment_views(self.home, limit=_int(params, "limit", 20, 1, 200)))

    def _deployment(self, deployment_id: str) -> Callable[[dict[str, str]], Any]:
        def one(params: dict[str, str]) -> Any:
            found = deployment_views(self.home, deployment_id=deployment_id)
            if not found:
                raise _BadRequest(f"no deployment {deployment_id!r}")
            return found[0]

        return one

    def _latency(self, params: dict[str, str]) -> BaseModel:
        return self.latency.chart(_int(params, "minutes", 30, 1, self.latency.keep_minutes))

    def _events(self, params: dict[str, str]) -> list[BaseModel]:
        return list(
            list_events(
                self.home,
                device=params.get("device") or None,
                limit=_int(params, "limit", 50, 1, 1000),
                after=_int(params, "after", 0, 0, 2**62),
            )
        )


def _digest(token: str) -> str:
    return hashlib.sha256(b"edgefleet-web:" + token.encode()).hexdigest()


def _int(params: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 12 or not low <= int(raw) <= high:
        raise _BadRequest(f"{key} must be a whole number from {low} to {high}")
    return int(raw)


def _json(status: HTTPStatus, value: Any) -> WebAnswer:
    def plain(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return v.model_dump(mode="json")
        if isinstance(v, datetime):
            return v.isoformat()
        raise TypeError(type(v).__name__)

    body = json.dumps(value, default=plain, separators=(",", ":")).encode()
    return WebAnswer(status, body, _JSON)


def _redirect(to: str, *, cookie: str) -> WebAnswer:
    return WebAnswer(HTTPStatus.SEE_OTHER, b"", headers={"Location": to, "Set-Cookie": cookie})


def _secure(answer: WebAnswer) -> WebAnswer:
    return WebAnswer(
        answer.status, answer.body, answer.content_type, {**_SECURITY, **answer.headers}
    )
