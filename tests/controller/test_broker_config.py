"""`edgefleet broker config`: the files it writes, and a real Mosquitto that enforces them
(a device speaks only for itself, strangers stay out) with a real agent logging in."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet import shared
from edgefleet.harness import Broker, free_port, wait_until

from .conftest import Cli

CONTROLLER = ("edgefleet-controller", "s3cret:p@ss/w%rd")  # reserved characters on purpose


@pytest.fixture
def secured(
    cli: Cli, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Broker, dict[str, dict[str, str]]]]:
    """Two enrolled devices and a Mosquitto running on the generated files."""
    port = free_port()
    user, password = CONTROLLER
    monkeypatch.setenv(
        "EDGEFLEET_BROKER_URL", f"mqtt://{user}:{quote(password, safe='')}@127.0.0.1:{port}"
    )
    configs = {}
    for name in ("pi-1", "pi-2"):
        out = tmp_path / f"{name}.toml"
        cli.ok("device", "add", name, "--profile", "rpi4", "--out", str(out),
               "--state-dir", str(tmp_path / name))  # fmt: skip
        text = out.read_text()
        # the controller's login stays with the controller
        assert user not in text and "s3cret" not in text and quote(password, safe="") not in text
        configs[name] = tomllib.loads(text)
    cli.ok("broker", "config", "--out", str(tmp_path / "mosquitto.d"))
    broker = Broker(tmp_path / "broker", port=port, include_dir=tmp_path / "mosquitto.d").start()
    yield broker, configs
    broker.stop()


class Client:
    """A paho client that records its CONNACK and queues what it receives."""

    def __init__(
        self,
        port: int,
        user: str | None,
        password: str | None,
        *,
        client_id: str = "",
        persistent: bool = False,
    ) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue[bool] = queue.Queue()
        self.disconnected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, reason, p: self.connack.put(not reason.is_failure)
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
        self.client.loop_start()

    def accepted(self) -> bool:
        return self.connack.get(timeout=10)

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[bool] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, reasons, p: done.put(True)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def received_until(self, last: bytes, timeout: float = 10) -> list[tuple[str, bytes]]:
        """Everything received up to and including the message ``last``."""
        got: list[tuple[str, bytes]] = []
        while not got or got[-1][1] != last:
            got.append(self.inbox.get(timeout=timeout))
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_files_name_every_device_and_the_controller(
    secured: tuple[Broker, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    folder = tmp_path / "mosquitto.d"
    passwd = (folder / "passwd").read_text().splitlines()
    users = [line.split(":")[0] for line in passwd]
    assert users == ["edgefleet-controller", "edgefleet-controller-cli", "pi-1", "pi-2"]
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in passwd)
    assert "s3cret" not in (folder / "passwd").read_text()  # hashes only
    acl = (folder / "acl").read_text()
    assert "user edgefleet-controller\ntopic readwrite edgefleet/v1/#" in acl
    assert "pattern read edgefleet/v1/devices/%u/cmd" in acl
    assert "user edgefleet-controller-cli\ntopic read edgefleet/v1/devices/+/status" in acl
    conf = (folder / "edgefleet.conf").read_text()
    broker, _ = secured
    assert f"listener {broker.port} 127.0.0.1\nuse_username_as_clientid true" in conf.replace(
        "# a client's id is its user name: no one can take over another's session\n", ""
    )
    assert f"max_packet_size {shared.MAX_MESSAGE_BYTES + 64 * 1024}" in conf
    assert "persistence true\nautosave_interval 1\n" in conf
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o640


def test_no_client_can_take_over_another_ones_session(
    secured: tuple[Broker, dict[str, dict[str, str]]],
) -> None:
    """An enrolled device that connects with another device's client id, or the
    controller's, gets its own user name as its id: the victims stay connected and a
    command queued in a device's persistent session while it is away still reaches it."""
    broker, configs = secured
    pi1, pi2 = configs["pi-1"], configs["pi-2"]
    victim = Client(broker.port, "pi-1", pi1["broker_password"], client_id="pi-1", persistent=True)
    controller = Client(broker.port, *CONTROLLER, client_id="edgefleet-controller")
    assert victim.accepted() and controller.accepted()
    victim.subscribe(shared.command_topic("pi-1"))
    victim.close()  # away; its session keeps what is sent meanwhile
    controller.publish(shared.command_topic("pi-1"), b"queued while away")

    impostors = [
        Client(broker.port, "pi-2", pi2["broker_password"], client_id=taken, persistent=False)
        for taken in ("pi-1", "edgefleet-controller")
    ]
    assert all(impostor.accepted() for impostor in impostors)
    for impostor in impostors:  # each took the id "pi-2"; the second pushed the first out
        impostor.close()

    back = Client(broker.port, "pi-1", pi1["broker_password"], client_id="pi-1", persistent=True)
    assert back.accepted()
    assert back.inbox.get(timeout=10) == (shared.command_topic("pi-1"), b"queued while away")
    controller.publish(shared.command_topic("pi-1"), b"after")
    assert back.received_until(b"after") == [(shared.command_topic("pi-1"), b"after")]
    assert not controller.disconnected.is_set()  # never kicked off by an impostor
    for c in (back, controller):
        c.close()


def test_a_queued_command_and_a_retained_status_survive_a_broker_crash(
    secured: tuple[Broker, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    """With the generated files, a SIGKILLed broker comes back with what it had saved a
    second before: the order queued for a device that is away, and every device's retained
    status. The harness' own setting is put back to a stock install's half hour first, so
    only the generated file's autosave can save them."""
    broker, configs = secured
    broker.autosave_interval = 1800  # Mosquitto's default; the included file comes later
    broker.restart()
    pi1 = configs["pi-1"]
    device = Client(broker.port, "pi-1", pi1["broker_password"], client_id="pi-1", persistent=True)
    controller = Client(broker.port, *CONTROLLER, client_id="edgefleet-controller")
    assert device.accepted() and controller.accepted()
    device.subscribe(shared.command_topic("pi-1"))
    status_topic = shared.status_topic("pi-1")
    device.client.publish(status_topic, b"serving v1", qos=1, retain=True).wait_for_publish(10)
    device.close()  # away; its session keeps the order sent meanwhile
    controller.publish(shared.command_topic("pi-1"), b"queued before the crash")
    saved = tmp_path / "broker" / "mosquitto.db"
    published = time.time()
    wait_until(
        lambda: saved.exists() and saved.stat().st_mtime > published + 0.01,
        10,
        "the broker saving its memory",
    )
    controller.close()
    broker.restart(kill=True)

    back = Client(broker.port, "pi-1", pi1["broker_password"], client_id="pi-1", persistent=True)
    assert back.accepted()
    assert back.inbox.get(timeout=10) == (
        shared.command_topic("pi-1"),
        b"queued before the crash",
    )
    back.close()
    reader = Client(broker.port, *CONTROLLER, client_id="edgefleet-controller")
    assert reader.accepted()
    reader.subscribe(status_topic)
    assert reader.inbox.get(timeout=10) == (status_topic, b"serving v1")
    reader.close()


def test_a_packet_larger_than_any_message_is_refused_and_its_sender_cut_off(
    secured: tuple[Broker, dict[str, dict[str, str]]],
) -> None:
    broker, configs = secured
    controller = Client(broker.port, *CONTROLLER)
    device = Client(broker.port, "pi-1", configs["pi-1"]["broker_password"])
    assert controller.accepted() and device.accepted()
    controller.subscribe(shared.events_topic("pi-1"))
    device.client.publish(shared.events_topic("pi-1"), b"x" * (2 * shared.MAX_MESSAGE_BYTES))
    assert device.disconnected.wait(10)
    honest = Client(broker.port, "pi-2", configs["pi-2"]["broker_password"])
    assert honest.accepted()
    controller.subscribe(shared.events_topic("pi-2"))
    honest.publish(shared.events_topic("pi-2"), b"small")
    assert controller.received_until(b"small") == [(shared.events_topic("pi-2"), b"small")]
    for c in (controller, device, honest):
        c.close()


def test_the_command_line_user_reads_devices_and_writes_their_commands_only(
    secured: tuple[Broker, dict[str, dict[str, str]]],
) -> None:
    broker, configs = secured
    user, password = CONTROLLER
    cli_user = Client(broker.port, f"{user}-cli", password)
    device = Client(broker.port, "pi-1", configs["pi-1"]["broker_password"])
    assert cli_user.accepted() and device.accepted()
    cli_user.subscribe(shared.events_topic("pi-1"))
    device.subscribe(shared.command_topic("pi-1"))
    device.subscribe(shared.status_topic("pi-1"))
    cli_user.publish(shared.status_topic("pi-1"), b"forged status")  # refused by the ACL
    cli_user.publish(shared.command_topic("pi-1"), b"benchmark this")
    device.publish(shared.events_topic("pi-1"), b"benchmarked")
    assert device.received_until(b"benchmark this") == [
        (shared.command_topic("pi-1"), b"benchmark this")
    ]
    assert cli_user.received_until(b"benchmarked") == [
        (shared.events_topic("pi-1"), b"benchmarked")
    ]
    for c in (cli_user, device):
        c.close()


def test_mosquitto_enforces_who_may_say_what(
    secured: tuple[Broker, dict[str, dict[str, str]]],
) -> None:
    broker, configs = secured
    pi1, pi2 = configs["pi-1"], configs["pi-2"]

    for user, password in ((None, None), ("pi-1", "wrong"), ("intruder", "x")):
        stranger = Client(broker.port, user, password)
        assert stranger.accepted() is False, user
        stranger.close()

    controller = Client(broker.port, *CONTROLLER)
    device1 = Client(broker.port, pi1["broker_username"], pi1["broker_password"])
    assert controller.accepted() and device1.accepted()
    controller.subscribe("edgefleet/v1/devices/+/status")
    device1.subscribe(shared.command_topic("pi-1"))
    device1.subscribe(shared.command_topic("pi-2"))  # granted or not, nothing may arrive

    device1.publish(shared.status_topic("pi-1"), b"pi-1 speaking")
    device1.publish(shared.status_topic("pi-2"), b"pi-1 pretending to be pi-2")
    device1.publish(shared.status_topic("pi-1"), b"pi-1 done")
    controller.publish(shared.command_topic("pi-1"), b"for pi-1")
    controller.publish(shared.command_topic("pi-2"), b"for pi-2")
    controller.publish(shared.command_topic("pi-1"), b"done")

    # Mosquitto handles a client's messages in order: a refused message that got through
    # would have arrived before the last one
    assert controller.received_until(b"pi-1 done") == [
        (shared.status_topic("pi-1"), b"pi-1 speaking"),
        (shared.status_topic("pi-1"), b"pi-1 done"),
    ]
    assert device1.received_until(b"done") == [
        (shared.command_topic("pi-1"), b"for pi-1"),
        (shared.command_topic("pi-1"), b"done"),
    ]
    assert pi2["broker_username"] == "pi-2"
    for c in (controller, device1):
        c.close()


@pytest.mark.slow  # an agent subprocess
def test_a_real_agent_logs_in_with_its_agent_toml(
    secured: tuple[Broker, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    broker, _ = secured
    controller = Client(broker.port, *CONTROLLER)
    assert controller.accepted()
    controller.subscribe(shared.status_topic("pi-1"))
    env = {**os.environ, "EDGEFLEET_AGENT_INFERENCE_PORT": str(free_port())}
    agent = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(tmp_path / "pi-1.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        topic, payload = controller.inbox.get(timeout=30)
        status = shared.decode(payload)
        assert isinstance(status, shared.StatusMessage)
        assert (topic, status.device_id, status.online) == (
            shared.status_topic("pi-1"),
            "pi-1",
            True,
        )
    finally:
        agent.terminate()
        agent.wait(timeout=20)
        controller.close()


def test_init_makes_the_controllers_broker_login(
    cli: Cli, initialised: Path, tmp_path: Path
) -> None:
    """The documented setup is never anonymous: `init` writes a broker login into
    config.toml (mode 0600), and `broker config` works right after it."""
    config = tomllib.loads((initialised / "config.toml").read_text())
    login = urlsplit(config["broker_url"])
    assert login.username == "edgefleet-controller" and len(login.password or "") >= 24
    assert (initialised / "config.toml").stat().st_mode & 0o777 == 0o600
    cli.ok("broker", "config", "--out", str(tmp_path / "d"))
    users = [line.split(":")[0] for line in (tmp_path / "d" / "passwd").read_text().splitlines()]
    assert users == ["edgefleet-controller", "edgefleet-controller-cli"]


def test_without_controller_credentials_nothing_is_written(
    cli: Cli, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_BROKER_URL", "mqtt://127.0.0.1:1883")
    result = cli("broker", "config", "--out", str(tmp_path / "d"))
    assert result.exit_code == 2
    assert "broker_url has no user name and password" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "d").exists()


def test_a_controller_user_name_that_would_break_the_files_is_refused(
    cli: Cli, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_BROKER_URL", "mqtt://evil%0Atopic%20readwrite%20%23:pw@h:1883")
    result = cli("broker", "config", "--out", str(tmp_path / "d"))
    assert result.exit_code == 2
    assert "broker user name" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "d").exists()
