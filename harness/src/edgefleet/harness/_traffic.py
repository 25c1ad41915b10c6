"""Steady client traffic on agents' inference endpoints, for tests that must show that no
client request failed while models were swapped or rolled back under it.

Each device gets one thread sending single-row digits requests at a steady rate until
:meth:`ClientTraffic.stop` (or a maximum duration, so a forgotten test cannot leave it
running). What the clients saw is tallied per device, in separate counts, so a test can
assert "zero failed" honestly:

- ``unreachable``: refused connections and ``503 no_model`` *before the device first
  answered* -- traffic may start before the agents are up or serving;
- ``failed``: every other request that did not get a 200 (an HTTP error status, a refused
  or broken connection, a timeout) once the device had answered -- what "client requests
  must not fail" counts;
- ``poisoned_refused``: requests carrying the marker of
  :func:`~edgefleet.harness.failing_digits_model` answered ``500 inference_failed``: the
  failure the test asked for, not a failure of the swap. A poisoned request that fails in
  any other way (a refused connection, a 503) is still ``failed``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import httpx
import numpy as np

from ._models import digits, poisoned

MAX_FAILURES_KEPT = 50  # reasons kept for an assertion message; counting goes on past it


@dataclass
class DeviceTally:
    """What the clients of one device saw (see the module docstring for each count)."""

    ok: int = 0  # clean requests answered 200
    failed: int = 0
    unreachable: int = 0
    poisoned_ok: int = 0  # poisoned requests a model without the marker answered 200
    poisoned_refused: int = 0
    deployments: Counter[str] = field(default_factory=Counter)  # who answered each 200

    @property
    def sent(self) -> int:
        return self.ok + self.failed + self.unreachable + self.poisoned_ok + self.poisoned_refused


class ClientTraffic:
    """Clients of the devices ``urls`` (name -> agent inference URL), each sending
    ``rate_per_s`` requests a second; a share ``poison_share`` of them carries the marker.

    Use as a context manager, or :meth:`start` and :meth:`stop`. Give the same URL under
    several names for several concurrent clients of one device.
    """

    def __init__(
        self,
        urls: Mapping[str, str],
        rate_per_s: float = 20.0,
        poison_share: float = 0.0,
        seed: int = 0,
        *,
        timeout_s: float = 10.0,
        max_duration_s: float = 600.0,
    ) -> None:
        if rate_per_s <= 0 or not 0.0 <= poison_share <= 1.0:
            raise ValueError("rate_per_s must be positive and poison_share within [0, 1]")
        self.urls = dict(urls)
        self.rate_per_s = rate_per_s
        self.poison_share = poison_share
        self.seed = seed
        self.timeout_s = timeout_s
        self.max_duration_s = max_duration_s
        self._tallies = {name: DeviceTally() for name in self.urls}
        self._answered: set[str] = set()  # devices that have answered once: "up"
        self._failures: list[str] = []  # the first MAX_FAILURES_KEPT
        self._latest: deque[str] = deque(maxlen=MAX_FAILURES_KEPT)  # and the newest ones
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    # -- running -----------------------------------------------------------------------

    def start(self) -> ClientTraffic:
        if self._threads:
            return self
        self._started = time.monotonic()
        for index, (name, url) in enumerate(self.urls.items()):
            thread = threading.Thread(
                target=self._client, args=(index, name, url), name=f"traffic-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop every client and wait for its request in flight (at most ``timeout_s``)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5.0)

    def __enter__(self) -> ClientTraffic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # -- what the clients saw ----------------------------------------------------------

    def counts(self) -> dict[str, tuple[int, int]]:
        """(ok, failed) per device; poisoned and unreachable requests are in neither."""
        with self._lock:
            return {name: (t.ok, t.failed) for name, t in self._tallies.items()}

    def unreachable(self) -> dict[str, int]:
        with self._lock:
            return {name: t.unreachable for name, t in self._tallies.items()}

    def tallies(self) -> dict[str, DeviceTally]:
        """A copy of every count per device."""
        with self._lock:
            return {
                name: replace(t, deployments=Counter(t.deployments))
                for name, t in self._tallies.items()
            }

    def failures(self) -> list[str]:
        """The first and the newest reasons of failed requests, oldest first:
        ``"<device> +<s>s: <reason>"``."""
        with self._lock:
            return self._failures + [f for f in self._latest if f not in self._failures]

    def wait_answered(self, at_least: int = 1, timeout: float = 30.0) -> None:
        """Wait until every device answered ``at_least`` requests with a 200."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                short = {
                    name: t.ok + t.poisoned_ok
                    for name, t in self._tallies.items()
                    if t.ok + t.poisoned_ok < at_least
                }
            if not short:
                return
            if time.monotonic() >= deadline or not self.running:
                raise TimeoutError(
                    f"fewer than {at_least} answers in {timeout}s from {short}; "
                    f"failures: {self.failures()[:5]}"
                )
            self._stop.wait(0.02)

    # -- the client threads ------------------------------------------------------------

    def _client(self, index: int, name: str, url: str) -> None:
        rng = np.random.default_rng([self.seed, index])
        rows = digits()[0]
        interval = 1.0 / self.rate_per_s
        deadline = self._started + self.max_duration_s
        next_at = time.monotonic()
        with httpx.Client(timeout=self.timeout_s) as http:
            while not self._stop.is_set() and time.monotonic() < deadline:
                row = rows[int(rng.integers(len(rows)))][None, :]
                poison = bool(rng.random() < self.poison_share)
                self._request(http, name, url, poisoned(row) if poison else row, poison)
                # a steady rate: a slow answer delays the next request, never bunches them
                next_at = max(next_at + interval, time.monotonic())
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _request(
        self, http: httpx.Client, name: str, url: str, row: np.ndarray, poison: bool
    ) -> None:
        try:
            response = http.post(f"{url}/v1/infer", json={"inputs": {"input": row.tolist()}})
        except httpx.HTTPError as exc:
            refused = isinstance(exc, httpx.ConnectError)
            self._tally(name, poison, None, "", f"{type(exc).__name__}: {exc}", refused)
            return
        code = ""
        if response.status_code >= 400:
            code, message = _error_of(response)
            reason = f"HTTP {response.status_code} {code}: {message}"
        else:
            reason = ""
        deployment = response.headers.get("X-Edgefleet-Deployment", "")
        not_serving = response.status_code == 503 and code == "no_model"
        self._tally(name, poison, response.status_code, deployment, reason, not_serving, code)

    def _tally(
        self,
        name: str,
        poison: bool,
        status: int | None,
        deployment: str,
        reason: str,
        not_up: bool,
        code: str = "",
    ) -> None:
        with self._lock:
            tally = self._tallies[name]
            if not_up and name not in self._answered:
                tally.unreachable += 1
                return
            if status is not None:
                self._answered.add(name)
            if status == 200:
                tally.deployments[deployment] += 1
                if poison:
                    tally.poisoned_ok += 1
                else:
                    tally.ok += 1
            elif poison and status == 500 and code == "inference_failed":
                tally.poisoned_refused += 1
            else:
                tally.failed += 1
                at = time.monotonic() - self._started
                line = f"{name} +{at:.2f}s: {reason or status}"
                if len(self._failures) < MAX_FAILURES_KEPT:
                    self._failures.append(line)
                else:
                    self._latest.append(line)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The agent's error code and message from an error response, whatever its body."""
    try:
        body: Any = response.json()
    except ValueError:
        return "", response.text[:200]
    if not isinstance(body, dict):
        return "", str(body)[:200]
    return str(body.get("code", "")), str(body.get("error", ""))[:200]
