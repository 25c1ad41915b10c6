"""The MQTT link's outgoing queue while the broker is away: bounded, and a full queue is
logged (once per hundred drops, not once per message). The delivery of what was queued,
after a real broker restart, is in test_outages.py."""

from __future__ import annotations

import logging

import pytest

from edgefleet.agent import Outbound
from edgefleet.agent._mqtt import BrokerSettings, MqttLink
from edgefleet.harness import free_port


def test_a_full_queue_drops_the_newest_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    # never connected: a port nobody listens on, and the link is not even started
    settings = BrokerSettings(host="127.0.0.1", port=free_port(), client_id="q", max_queued=3)
    link = MqttLink(settings, subscriptions=[])
    caplog.set_level(logging.WARNING, "edgefleet.agent.mqtt")
    for i in range(3):
        link.publish(Outbound("edgefleet/v1/devices/q/events", f"kept {i}".encode()))
    assert caplog.records == []  # queued while disconnected: normal, not worth a line

    for i in range(250):
        link.publish(Outbound("edgefleet/v1/devices/q/events", f"dropped {i}".encode()))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # the first drop, the 100th and the 200th
    assert "outgoing queue full (3 messages wait for the broker)" in lines[0]
    assert lines[-1].endswith("200 dropped since the last connect")
