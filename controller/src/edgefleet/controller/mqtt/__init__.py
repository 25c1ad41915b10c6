"""The controller's MQTT adapter, shared by the daemon and on-device benchmarks."""

from ._link import PUBLISH_TIMEOUT_S, SESSION_EXPIRY_S, MqttLink, Received, Session

__all__ = ["PUBLISH_TIMEOUT_S", "SESSION_EXPIRY_S", "MqttLink", "Received", "Session"]
