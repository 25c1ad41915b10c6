"""The agent's production I/O, built from its settings: the artifact HTTP client, the MQTT
link, and the retry policy of downloads. Tests pass their own to :class:`Agent`."""

from __future__ import annotations

import ssl

import httpx

from edgefleet import shared

from ._config import AgentConfig
from ._mqtt import BrokerSettings, MqttLink, tls_context
from ._retry import DownloadRetry

AGENT_VERSION = "0.1.0"


def artifact_client(config: AgentConfig) -> httpx.Client:
    """The production HTTP client for artifacts: base URL, bearer token, timeouts."""
    headers = {"User-Agent": f"edgefleet-agent/{AGENT_VERSION}"}
    if config.artifact_token:
        headers["Authorization"] = f"Bearer {config.artifact_token}"
    verify: ssl.SSLContext | bool = True
    if config.tls_ca and config.artifact_base_url.startswith("https:"):
        verify = tls_context(None, config.tls_ca)
    return httpx.Client(
        base_url=config.artifact_base_url,
        headers=headers,
        verify=verify,
        timeout=httpx.Timeout(
            config.download_timeout_s, connect=min(10.0, config.download_timeout_s)
        ),
        follow_redirects=False,
    )


def broker_link(config: AgentConfig) -> MqttLink:
    """The production MQTT link: this device's session, subscribed to its command topic."""
    host, port, tls = config.broker
    settings = BrokerSettings(
        host=host,
        port=port,
        client_id=config.device_id,
        tls=tls,
        ca_file=config.broker_ca_file,
        ca_pem=config.tls_ca,
        username=config.broker_username,
        password=config.broker_password,
        keepalive_s=config.keepalive_s,
        session_expiry_s=config.session_expiry_s,
        reconnect_min_s=config.reconnect_min_s,
        reconnect_max_s=config.reconnect_max_s,
    )
    return MqttLink(
        settings, subscriptions=[shared.command_topic(config.device_id, config.topic_prefix)]
    )


def download_retry(config: AgentConfig) -> DownloadRetry:
    """When a failed download is tried again, and for how long, by the agent's settings."""
    return DownloadRetry(
        first_s=config.download_retry_s,
        max_s=config.download_retry_max_s,
        max_attempts=config.download_attempts,
        deadline_s=config.download_deadline_s,
    )
