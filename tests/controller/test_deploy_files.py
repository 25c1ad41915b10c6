"""The production files in deploy/: the systemd units pass `systemd-analyze verify` (and its
offline security review), Mosquitto starts from deploy/mosquitto/mosquitto.conf with the
files `edgefleet broker config` writes and speaks TLS with passwords and the ACL, and
promtool accepts the Prometheus scrape config."""

from __future__ import annotations

import queue
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.harness import free_port, mosquitto_binary, wait_port

from .conftest import Cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VENV_BIN = Path(sys.executable).parent
UNITS = {
    "edgefleet-controller.service": ("/opt/edgefleet/bin/", "edgefleet"),
    "edgefleet-agent.service": ("/opt/edgefleet-agent/bin/", "edgefleet-agent"),
}


def _need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:  # pragma: no cover - `make setup` installs it
        pytest.skip(f"{binary} is not installed (make setup installs it)")
    return found


@pytest.fixture
def units(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this venv's scripts (verify wants them to exist)."""
    out = []
    for name, (prefix, script) in UNITS.items():
        assert (VENV_BIN / script).exists()
        text = (DEPLOY / "systemd" / name).read_text().replace(prefix, f"{VENV_BIN}/")
        (tmp_path / name).write_text(text)
        out.append(tmp_path / name)
    return out


def test_the_units_verify_cleanly(units: list[Path]) -> None:
    tool = _need("systemd-analyze")
    result = subprocess.run([tool, "verify", *map(str, units)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and misplaced options: any word about our files fails
    assert not [line for line in result.stderr.splitlines() if "edgefleet" in line], result.stderr


def test_the_units_run_as_their_own_user_hardened(units: list[Path]) -> None:
    tool = _need("systemd-analyze")
    for unit in units:
        text = unit.read_text()
        user = re.search(r"(?m)^User=(.+)$", text)
        assert user and user.group(1) in ("edgefleet", "edgefleet-agent")
        assert re.search(r"(?m)^StateDirectory=" + user.group(1) + "$", text)
        assert "Restart=" in text and "NoNewPrivileges=yes" in text
        result = subprocess.run(
            [tool, "security", "--offline=true", str(unit)], capture_output=True, text=True
        )
        level = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
        assert level, result.stdout[-500:] + result.stderr
        assert float(level.group(1)) <= 2.0, result.stdout  # systemd calls < 2 "OK"
    sysusers = (DEPLOY / "systemd" / "edgefleet.sysusers.conf").read_text()
    assert "u edgefleet " in sysusers and "u edgefleet-agent " in sysusers


def test_the_prometheus_config_is_valid(tmp_path: Path) -> None:
    promtool = _need("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def production_mosquitto_conf(folder: Path, include_dir: Path) -> Path:
    """deploy/mosquitto/mosquitto.conf with its system paths moved into ``folder`` (and
    `user root`: Mosquitto could not read pytest's private folders as its own user)."""
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    swaps = {
        "user mosquitto": "user root",
        "pid_file /run/mosquitto/mosquitto.pid": f"pid_file {folder}/mosquitto.pid",
        "persistence_location /var/lib/mosquitto/": f"persistence_location {folder}/",
        "log_dest syslog": f"log_dest file {folder}/mosquitto.log",
        "include_dir /etc/mosquitto/edgefleet.d": f"include_dir {include_dir}",
    }
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    conf = folder / "mosquitto.conf"
    conf.write_text(text)
    return conf


def _connect(port: int, user: str, password: str, ca: str) -> tuple[mqtt.Client, bool]:
    answers: queue.Queue[bool] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    context = ssl.create_default_context(cadata=ca)
    client.tls_set_context(context)
    client.on_connect = lambda c, u, f, reason, p: answers.put(not reason.is_failure)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, answers.get(timeout=10)


def _received(client: mqtt.Client, topic: str) -> queue.Queue[str]:
    got: queue.Queue[str] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    client.on_message = lambda c, u, m: got.put(m.topic)
    client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(True)
    client.subscribe(topic, qos=1)
    subscribed.get(timeout=10)
    return got


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_mosquitto_runs_from_the_production_config(
    cli: Cli, home_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        binary = mosquitto_binary()
    except RuntimeError:  # pragma: no cover - `make setup` installs it
        pytest.skip("mosquitto is not installed (make setup installs it)")
    port = free_port()
    monkeypatch.setenv(
        "EDGEFLEET_BROKER_URL", f"mqtts://edgefleet-controller:pw-1@127.0.0.1:{port}"
    )
    cli.ok("init")
    cli.ok("tls", "init")
    for name in ("pi-1", "pi-2"):
        cli.ok("device", "add", name, "--profile", "rpi4", "--out", str(tmp_path / f"{name}.toml"))
    include = tmp_path / "edgefleet.d"
    cli.ok("broker", "config", "--out", str(include))
    state = tmp_path / "broker"
    state.mkdir()
    conf = production_mosquitto_conf(state, include)
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        wait_port(port)
        ca = (home_dir / "tls" / "ca.pem").read_text()
        # TLS only: a plain MQTT connection gets no CONNACK
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            tls = ssl.create_default_context(cadata=ca).wrap_socket(
                raw, server_hostname="127.0.0.1"
            )
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.close()
        pi1 = tomllib.loads((tmp_path / "pi-1.toml").read_text())
        controller, accepted = _connect(port, "edgefleet-controller", "pw-1", ca)
        assert accepted
        heard = _received(controller, "edgefleet/v1/#")
        client, accepted = _connect(port, "pi-1", pi1["broker_password"], ca)
        try:
            assert accepted
            # the ACL: pi-1 cannot speak for pi-2; its own status goes through, in order
            client.publish("edgefleet/v1/devices/pi-2/status", b"{}", qos=1).wait_for_publish(5)
            client.publish("edgefleet/v1/devices/pi-1/status", b"{}", qos=1).wait_for_publish(5)
            assert heard.get(timeout=10) == "edgefleet/v1/devices/pi-1/status"
        finally:
            for c in (client, controller):
                c.disconnect()
                c.loop_stop()
        stranger, accepted = _connect(port, "pi-1", "not-its-password", ca)
        stranger.loop_stop()
        assert not accepted  # the password file
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (state / "mosquitto.db").exists()  # persistence, saved on the way out
