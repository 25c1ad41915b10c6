"""One worker process's share of a simulated fleet: a paho client per device, all driven
from one thread by a ``selectors`` loop (see ``_simfleet`` for why), with timers for the
devices' lifecycles, telemetry at a set rate, and control lines on stdin.

Control (JSON lines in on stdin, out on stdout): ``{"op": "report"}`` answers every
device's receipts; ``{"op": "telemetry", "rate": R, "seconds": S}`` publishes R telemetry
messages a second across the worker's devices for S seconds, then answers with the counts;
``{"op": "stop"}`` (or stdin closing) disconnects every device and ends the process. The
worker says ``ready`` once every device is connected and has published its status, and
``progress`` every second.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import selectors
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet import shared
from edgefleet.agent import AgentConfig

from ._simfleet import SimDevice, SimTimings

log = logging.getLogger("edgefleet.harness.simfleet")

CONNECTS_PER_TICK = 50  # paced, so the broker's listen backlog never overflows
TICK_S = 0.01
MAX_TELEMETRY_PER_TICK = 2000  # the rest waits a tick: reading commands must go on
SESSION_EXPIRY_S = 24 * 3600
KEEPALIVE_S = 60


@dataclass
class SimOptions:
    timings: SimTimings
    telemetry_interval_s: float = 10.0  # each device's, as the agent's default
    telemetry_qos: int = 0  # the agent's
    seed: int = 1
    max_seconds: float = 3600.0  # the worker ends by itself after this long, whatever happens


class SimLoop:
    """The devices of ``configs`` (their ``agent.toml``, read with the agent's own loader)."""

    def __init__(
        self, configs: list[AgentConfig], options: SimOptions, out: Callable[[dict[str, Any]], None]
    ) -> None:
        self.options = options
        self.out = out
        self.sel = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.rng = random.Random(options.seed)
        self.devices: list[SimDevice] = []
        self.clients: list[mqtt.Client] = []
        self.configs = configs
        self.connected: set[int] = set()
        self.to_connect = list(range(len(configs)))
        self.ready_sent = False
        self.stopping = False
        self.published = 0
        self.telemetry_sent = 0
        self.telemetry_acked = 0
        self._telemetry_mids: set[tuple[int, int]] = set()
        self._background = len(configs) / options.telemetry_interval_s
        self.rate = self._background
        self._burst: tuple[float, int, int] | None = None  # until, sent before, acked before
        self._carry = 0.0
        self._next_device = 0
        for i, config in enumerate(configs):
            self._add(i, config)

    def _add(self, i: int, config: AgentConfig) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=config.device_id, protocol=mqtt.MQTTv5,
            userdata=i,
        )  # fmt: skip
        if config.broker_username:
            client.username_pw_set(config.broker_username, config.broker_password)
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        device = SimDevice(
            config.device_id, config.keyring(), profile=config.profile,
            prefix=config.topic_prefix, send=self._sender(i), later=self.later,
            timings=self.options.timings, rng=random.Random(self.rng.random()),
        )  # fmt: skip
        self.devices.append(device)
        self.clients.append(client)

    # -- paho's external loop --------------------------------------------------------

    def _socket_open(self, client: mqtt.Client, i: int, sock: Any) -> None:
        self.sel.register(sock, selectors.EVENT_READ, i)

    def _socket_close(self, client: mqtt.Client, i: int, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _register_write(self, client: mqtt.Client, i: int, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)

    def _unregister_write(self, client: mqtt.Client, i: int, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ, i)

    def _connect(self, i: int) -> None:
        config, client, device = self.configs[i], self.clients[i], self.devices[i]
        host, port, _tls = config.broker
        client.will_set(device.status_topic, device.status(online=False), qos=1, retain=True)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            client.connect(host, port, keepalive=KEEPALIVE_S, clean_start=False, properties=props)
        except OSError as exc:
            log.warning("%s cannot reach the broker: %s", config.device_id, exc)
            self.later(1 + self.rng.random(), lambda: self._connect(i))

    def _on_connect(self, client: mqtt.Client, i: int, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused %s: %s", self.configs[i].device_id, reason)
            return
        device = self.devices[i]
        client.subscribe(device.command_topic, qos=1)
        device.publish_status()  # the birth message
        self.connected.add(i)

    def _on_disconnect(self, client: mqtt.Client, i: int, *_: Any) -> None:
        self.connected.discard(i)
        if not self.stopping:  # back with jitter, like the agent
            self.later(0.5 + self.rng.random(), lambda: self._reconnect(i))

    def _reconnect(self, i: int) -> None:
        if self.stopping or i in self.connected:
            return
        try:
            self.clients[i].reconnect()
        except OSError:
            self.later(1 + self.rng.random(), lambda: self._reconnect(i))

    def _on_message(self, client: mqtt.Client, i: int, msg: mqtt.MQTTMessage) -> None:
        try:
            self.devices[i].on_command(bytes(msg.payload))
        except Exception:  # one device's bug must not end the others' loop
            log.exception("%s failed on a command", self.configs[i].device_id)

    def _on_publish(self, client: mqtt.Client, i: int, mid: int, *_: Any) -> None:
        if (i, mid) in self._telemetry_mids:
            self._telemetry_mids.discard((i, mid))
            self.telemetry_acked += 1

    def _sender(self, i: int) -> Callable[[str, bytes, int, bool], None]:
        def send(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            self.clients[i].publish(topic, payload, qos=qos, retain=retain)
            self.published += 1

        return send

    def later(self, seconds: float, call: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + seconds, next(self._order), call))

    # -- telemetry -------------------------------------------------------------------

    def _telemetry(self, elapsed: float) -> None:
        if not self.connected:
            return
        self._carry = min(self._carry + self.rate * elapsed, MAX_TELEMETRY_PER_TICK)
        n = len(self.devices)
        interval = n / self.rate if self.rate else self.options.telemetry_interval_s
        for _ in range(int(self._carry)):
            for _skip in range(n):  # the next connected device, round the fleet
                i = self._next_device
                self._next_device = (i + 1) % n
                if i in self.connected:
                    break
            else:
                return
            self._carry -= 1
            payload = self.devices[i].telemetry(interval)
            topic = shared.telemetry_topic(self.devices[i].device_id, self.devices[i].prefix)
            info = self.clients[i].publish(topic, payload, qos=self.options.telemetry_qos)
            self.published += 1
            self.telemetry_sent += 1
            self._telemetry_mids.add((i, info.mid))

    # -- control ---------------------------------------------------------------------

    def _control(self, line: str) -> None:
        try:
            order = json.loads(line)
        except ValueError:
            return
        op = order.get("op")
        if op == "report":
            self.out({"op": "report", "devices": {d.device_id: d.summary() for d in self.devices}})
        elif op == "telemetry":
            self.rate = float(order["rate"])
            until = time.monotonic() + float(order["seconds"])
            self._burst = (until, self.telemetry_sent, self.telemetry_acked)
        elif op == "stop":
            self.stopping = True

    def _burst_over(self, now: float) -> None:
        if self._burst is None or now < self._burst[0]:
            return
        _, sent, acked = self._burst
        self._burst = None
        self.rate = self._background
        self.out({"op": "telemetry", "sent": self.telemetry_sent - sent,
                  "acked_so_far": self.telemetry_acked - acked})  # fmt: skip

    def run(self, control_fd: int) -> None:
        os.set_blocking(control_fd, False)
        self.sel.register(control_fd, selectors.EVENT_READ, None)
        buffered = b""
        started = last = last_misc = last_progress = time.monotonic()
        while not self.stopping and time.monotonic() - started < self.options.max_seconds:
            for _ in range(min(CONNECTS_PER_TICK, len(self.to_connect))):
                self._connect(self.to_connect.pop())
            wait = TICK_S if not self.timers else min(TICK_S, self.timers[0][0] - time.monotonic())
            for key, events in self.sel.select(max(wait, 0.0)):
                if key.data is None:
                    chunk = os.read(control_fd, 65536)
                    if not chunk:
                        self.stopping = True
                    *lines, buffered = (buffered + chunk).split(b"\n")
                    for line in lines:
                        self._control(line.decode())
                    continue
                client = self.clients[key.data]
                if events & selectors.EVENT_READ:
                    client.loop_read()
                if events & selectors.EVENT_WRITE:
                    client.loop_write()
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, call = heapq.heappop(self.timers)
                try:
                    call()
                except Exception:
                    log.exception("a simulated device's timer failed")
            self._telemetry(now - last)
            self._burst_over(now)
            last = now
            if now - last_misc >= 1.0:
                last_misc = now
                for i in self.connected.copy():
                    self.clients[i].loop_misc()
            if not self.ready_sent and len(self.connected) == len(self.devices):
                self.ready_sent = True
                self.out({"op": "ready", "devices": len(self.devices)})
            if now - last_progress >= 1.0:
                last_progress = now
                self.out(self._progress())
        self._close()

    def _progress(self) -> dict[str, Any]:
        return {
            "op": "progress",
            "connected": len(self.connected),
            "published": self.published,
            "telemetry_sent": self.telemetry_sent,
            "telemetry_acked": self.telemetry_acked,
        }

    def _close(self) -> None:
        self.stopping = True
        for i in list(self.connected):
            with contextlib.suppress(Exception):
                self.clients[i].disconnect()
        deadline = time.monotonic() + 2.0
        while self.connected and time.monotonic() < deadline:
            for key, events in self.sel.select(0.05):
                if key.data is not None:
                    client = self.clients[key.data]
                    if events & selectors.EVENT_WRITE:
                        client.loop_write()
                    if events & selectors.EVENT_READ:
                        client.loop_read()
        self.out({**self._progress(), "op": "stopped"})


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()
