"""TLS for real: the private CA `edgefleet tls init` makes, a Mosquitto TLS listener from
`edgefleet broker config`, `edgefleet serve` over HTTPS, and an agent that trusts the CA
from its agent.toml and takes a deployment over mqtts:// and https://."""

from __future__ import annotations

import json
import socket
import ssl
import tomllib
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from edgefleet.controller.home import ensure_tls, existing_tls
from edgefleet.harness import Broker, ControllerFleet, wait_until, write_digits_model

from .conftest import Cli


def test_the_ca_is_made_once_and_the_certificate_follows_the_names(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path, ["127.0.0.1", "broker.lan"])
    ca = first.ca_cert.read_bytes()
    server = first.server_cert.read_bytes()
    assert first.names == ("127.0.0.1", "broker.lan")
    assert first.ca_key.stat().st_mode & 0o777 == 0o600
    assert first.server_key.stat().st_mode & 0o777 == 0o600

    assert ensure_tls(tmp_path, ["broker.lan", "127.0.0.1"]).server_cert.read_bytes() == server
    again = ensure_tls(tmp_path, ["127.0.0.1", "broker.lan", "10.0.0.5"])
    assert again.ca_cert.read_bytes() == ca  # devices keep trusting the same CA
    assert again.server_cert.read_bytes() != server
    cert = x509.load_pem_x509_certificate(again.server_cert.read_bytes())
    issuer = x509.load_pem_x509_certificate(ca)
    cert.verify_directly_issued_by(issuer)
    assert existing_tls(tmp_path) == again


def test_tls_init_names_the_broker_and_artifact_hosts(
    cli: Cli, initialised: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_BROKER_URL", "mqtts://u:p@broker.example:8883")
    monkeypatch.setenv("EDGEFLEET_ARTIFACT_URL", "https://files.example:8471/artifacts/")
    out = json.loads(cli.ok("tls", "init", "--san", "192.0.2.7", "--json").stdout)
    assert out["names"] == ["192.0.2.7", "broker.example", "files.example"]
    assert Path(out["key"]).stat().st_mode & 0o777 == 0o600

    cli.ok("device", "add", "pi-1", "--profile", "rpi4", "--out", str(initialised / "a.toml"))
    agent = tomllib.loads((initialised / "a.toml").read_text())
    assert agent["tls_ca"] == Path(out["ca"]).read_text()
    assert agent["broker_url"] == "mqtts://broker.example:8883"


def test_an_mqtts_broker_url_without_a_certificate_is_refused(
    cli: Cli, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_BROKER_URL", "mqtts://u:p@127.0.0.1:8883")
    result = cli("broker", "config", "--out", str(tmp_path / "d"))
    assert result.exit_code == 2 and "edgefleet tls init" in result.stderr
    assert "Traceback" not in result.output


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_deployment_over_mqtts_and_https(fleet: ControllerFleet, tmp_path: Path) -> None:
    port = fleet.broker.port
    fleet.broker.stop()  # replaced by a TLS broker on the same port, from the generated files
    fleet.env["EDGEFLEET_BROKER_URL"] = f"mqtts://edgefleet-controller:pw-1234@127.0.0.1:{port}"
    fleet.env["EDGEFLEET_ARTIFACT_URL"] = f"https://127.0.0.1:{fleet.http_port}/artifacts/"
    fleet.init()
    fleet.ok("tls", "init")
    model = write_digits_model(fleet.tmp / "digits.onnx", seed=0)
    fleet.ok("model", "add", str(model), "--name", "digits", "--version", "1.0.0")
    fleet.add_device("pi-1", "rpi4")
    fleet.ok("broker", "config", "--out", str(tmp_path / "mosquitto.d"))
    fleet.broker = Broker(tmp_path / "tls-broker", port=port, include_dir=tmp_path / "mosquitto.d")
    fleet.broker.start()
    ca = (fleet.home / "tls" / "ca.pem").read_text()

    # the listener speaks TLS only, with a certificate the operator's CA signed
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        context = ssl.create_default_context(cadata=ca)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")

    fleet.start_daemon()
    fleet.start_agent("pi-1")
    fleet.wait_online("pi-1")
    fleet.ok("deploy", "digits:1.0.0", "--device", "pi-1", "--wait", "--timeout", "60")
    assert fleet.status()["pi-1"]["state"] == "committed"

    # the artifact server answers HTTPS only; plain HTTP gets nowhere
    health = httpx.get(f"https://127.0.0.1:{fleet.http_port}/healthz", verify=ssl_context(ca))
    assert health.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{fleet.http_port}/healthz", timeout=5)
    wait_until(lambda: fleet.events("pi-1")[-1:] == ["committed"], 10, "no committed event")


def ssl_context(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca)
