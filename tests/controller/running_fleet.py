"""A running fleet for the observability tests (Prometheus and the dashboard, the fleet page):
`edgefleet serve`, two real agents serving digits:1.0.0 under steady inference traffic, and
one enrolled board without an agent whose status and telemetry (with a temperature, which
this machine's agents cannot read) go through the real broker and ingest."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet import shared
from edgefleet.harness import ControllerFleet, digits, infer_digits, write_digits_model
from edgefleet.shared import StatusMessage, SystemStats, TelemetryMessage

AGENTS = {"pi-1": "rpi4", "box-1": "x86-edge"}
SENSOR = "sensor-1"  # enrolled, no agent: its messages are published here


class RunningFleet(ControllerFleet):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._stop = threading.Event()
        self._traffic: threading.Thread | None = None
        self._mqtt: mqtt.Client | None = None

    def start(self) -> RunningFleet:
        self.init()
        model = write_digits_model(self.tmp / "digits.onnx", seed=0)
        self.ok("model", "add", str(model), "--name", "digits", "--version", "1.0.0")
        for name, profile in AGENTS.items():
            self.add_device(name, profile)
        self.add_device(SENSOR, "rpi5")
        self.start_daemon()
        for name in AGENTS:
            self.start_agent(name)
        self.wait_online(*AGENTS)
        self.ok("deploy", "digits:1.0.0", *_devices(AGENTS), "--wait", "--timeout", "90")
        self._mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._mqtt.connect("127.0.0.1", self.broker.port)
        self._mqtt.loop_start()
        self._traffic = threading.Thread(target=self._load, name="traffic", daemon=True)
        self._traffic.start()
        return self

    def _load(self) -> None:
        x, _ = digits()
        while not self._stop.wait(0.1):
            for name in AGENTS:
                try:
                    infer_digits(self.url(name), x[:4])
                except httpx.HTTPError:
                    continue  # a swap or a stopping agent: try again
            self._sensor()

    def _sensor(self) -> None:
        assert self._mqtt is not None
        status = StatusMessage(device_id=SENSOR, online=True)
        telemetry = TelemetryMessage(
            device_id=SENSOR,
            interval_s=1.0,
            system=SystemStats(
                cpu_percent=7.0, memory_used_bytes=300 << 20, temperature_c=51.5,
                disk_free_bytes=2 << 30,
            ),
        )  # fmt: skip
        self._mqtt.publish(shared.status_topic(SENSOR), shared.encode(status), qos=1, retain=True)
        self._mqtt.publish(shared.telemetry_topic(SENSOR), shared.encode(telemetry), qos=0)

    def close(self) -> None:
        self._stop.set()
        if self._traffic:
            self._traffic.join(timeout=15)
        if self._mqtt:
            self._mqtt.loop_stop()
            self._mqtt.disconnect()
        super().close()


def _devices(names: dict[str, str]) -> list[str]:
    return [arg for name in names for arg in ("--device", name)]
