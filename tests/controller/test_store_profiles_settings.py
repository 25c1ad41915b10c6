"""The artifact store, profile files and settings: small pieces with their own edge cases."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from edgefleet.controller import ArtifactStore, load_profiles, load_settings
from edgefleet.controller.home import builtin_profiles_dir
from edgefleet.shared import sha256_bytes
from edgefleet.shared.errors import ArtifactError, ChecksumMismatch, ConfigError

# -- artifact store ----------------------------------------------------------------


def test_store_is_content_addressed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    data = b"model bytes" * 1000
    stored = store.put_bytes(data)
    digest = sha256_bytes(data)
    assert stored.sha256 == digest
    assert stored.size == len(data)
    assert stored.path == f"sha256/{digest[:2]}/{digest}"
    assert (tmp_path / "artifacts" / stored.path).read_bytes() == data
    assert digest in store
    assert store.put_bytes(data) == stored  # idempotent
    assert list((tmp_path / "artifacts" / "tmp").iterdir()) == []  # no leftovers


def test_store_from_a_file_and_verify(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(os.urandom(3 << 20))  # several read chunks
    store = ArtifactStore(tmp_path / "a")
    stored = store.put_file(src)
    store.verify(stored.sha256)
    store.path_of(stored.sha256).write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        store.verify(stored.sha256)


def test_store_missing_source_and_bad_digest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    with pytest.raises(ConfigError):
        store.put_file(tmp_path / "nope")
    with pytest.raises(ArtifactError):
        store.path_of("../../etc/passwd")
    assert "../../etc/passwd" not in store


def test_concurrent_writers_of_the_same_bytes(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    data = os.urandom(1 << 20)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(store.put_bytes(data))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.sha256 for r in results}) == 1
    assert store.path_of(results[0].sha256).read_bytes() == data


# -- profiles ------------------------------------------------------------------------


def test_builtin_profiles_load() -> None:
    profiles = load_profiles([builtin_profiles_dir()])
    assert {"rpi4", "rpi5", "x86-edge"} <= set(profiles)
    for p in profiles.values():
        assert p.runtime.execution_providers
        assert p.budgets.max_size_bytes > 0
    assert "dotprod" not in profiles["rpi4"].isa_features
    assert "dotprod" in profiles["rpi5"].isa_features
    assert "avx2" in profiles["x86-edge"].isa_features


def test_home_profiles_replace_builtins(tmp_path: Path) -> None:
    (tmp_path / "rpi4.toml").write_text(
        'name = "rpi4"\narch = "arm64"\ncores = 4\nram_mb = 1024\n'
        "[budgets]\nmax_size_bytes = 1\nmax_latency_ms = 1\nmax_accuracy_drop = 0\n"
    )
    profiles = load_profiles([builtin_profiles_dir(), tmp_path])
    assert profiles["rpi4"].ram_mb == 1024
    assert "rpi5" in profiles


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("arch = [", "not valid TOML"),
        ('arch = "arm64"\ncores = 4\nram_mb = 1\n', "budgets"),
        ('arch = "sparc"\ncores = 1\nram_mb = 1\n[budgets]\nmax_size_bytes = 1\n'
         "max_latency_ms = 1\nmax_accuracy_drop = 0\n", "arch"),
        ('arch = "arm64"\ncores = 1\nram_mb = 1\ncolour = "red"\n[budgets]\nmax_size_bytes = 1\n'
         "max_latency_ms = 1\nmax_accuracy_drop = 0\n", "colour"),
        ('name = "other"\narch = "arm64"\ncores = 1\nram_mb = 1\n[budgets]\nmax_size_bytes = 1\n'
         "max_latency_ms = 1\nmax_accuracy_drop = 0\n", "name the file"),
        ('arch = "arm64"\ncores = 1\nram_mb = 1\n[budgets]\nmax_size_bytes = 1\n'
         'max_latency_ms = 1\nmax_accuracy_drop = 0\n[compression]\npasses = ["magic"]\n',
         "passes"),
    ],
)  # fmt: skip
def test_bad_profile_files_are_reported_with_their_path(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as info:
        load_profiles([tmp_path])
    assert str(path) in str(info.value)


# -- settings ------------------------------------------------------------------------


def test_settings_defaults_and_env_override(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'registry.db'}"
    env = {"EDGEFLEET_DATABASE_URL": "postgresql://db/x", "EDGEFLEET_ARTIFACT_URL": "http://h:1/a"}
    settings = load_settings(tmp_path, env=env)
    assert settings.database_url == "postgresql://db/x"
    assert settings.artifact_url == "http://h:1/a/"


def test_settings_home_from_env(tmp_path: Path) -> None:
    assert load_settings(env={"EDGEFLEET_HOME": str(tmp_path)}).home == tmp_path.resolve()


def test_config_file_values_and_checks(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('broker_url = "mqtt://broker:1884"\nhttp_port = 9000\n')
    settings = load_settings(tmp_path, env={})
    assert (settings.broker_url, settings.http_port) == ("mqtt://broker:1884", 9000)
    (tmp_path / "config.toml").write_text('broker_url = "http://nope"\n')
    with pytest.raises(ConfigError, match="broker_url"):
        load_settings(tmp_path, env={})
    (tmp_path / "config.toml").write_text('http_port = "80"\n')
    with pytest.raises(ConfigError, match="http_port"):
        load_settings(tmp_path, env={})


def test_broker_endpoint_decodes_credentials_and_defaults_ports() -> None:
    from edgefleet.shared import broker_endpoint

    e = broker_endpoint("mqtt://ctl:s3cret%3Ap%40ss%2Fw%25rd@broker.local:1884")
    assert (e.host, e.port, e.tls, e.username, e.password) == (
        "broker.local",
        1884,
        False,
        "ctl",
        "s3cret:p@ss/w%rd",
    )
    e = broker_endpoint("mqtts://broker.local")
    assert (e.port, e.tls, e.username, e.password) == (8883, True, None, None)
    assert broker_endpoint("mqtt://h").port == 1883


def test_broker_urls_are_redacted_for_logs_and_devices() -> None:
    from edgefleet.shared import broker_endpoint
    from edgefleet.shared import redacted_url as redacted

    url = "mqtt://ctl:s3cret@broker.local:1884"
    assert redacted(url) == "mqtt://ctl:***@broker.local:1884"
    assert redacted("mqtt://broker.local:1884") == "mqtt://broker.local:1884"
    assert broker_endpoint(url).public_url == "mqtt://broker.local:1884"
    assert broker_endpoint("mqtts://h").public_url == "mqtts://h:8883"
