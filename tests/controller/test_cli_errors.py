"""Bad input gets one clear line on stderr, a non-zero exit, and leaves the registry as it was."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from .conftest import Cli, files_under, sqlite_snapshot


@pytest.fixture
def populated(cli: Cli, initialised: Path, model_file: Path, tmp_path: Path) -> Path:
    cli.ok("device", "add", "pi-1", "--profile", "rpi4", "--out", str(tmp_path / "pi-1.toml"))
    cli.ok("model", "add", str(model_file), "--name", "digits", "--version", "1.0.0")
    return initialised


def _not_onnx(tmp: Path) -> str:
    path = tmp / "model.onnx"
    path.write_text("this is not a model\n")
    return str(path)


def _truncated_onnx(tmp: Path, model_file: Path) -> str:
    path = tmp / "truncated.onnx"
    path.write_bytes(model_file.read_bytes()[:200])
    return str(path)


def _wrong_sample(tmp: Path) -> str:
    path = tmp / "wrong.npz"
    np.savez(path, x=np.zeros((8, 3), dtype=np.float32))
    return str(path)


def _text_sample(tmp: Path) -> str:
    path = tmp / "text.npz"
    path.write_text("not a zip")
    return str(path)


# (case, argv builder, exit code, expected words in the message)
CASES: list[tuple[str, Callable[[Path, Path], list[str]], int, str]] = [
    ("model file missing",
     lambda t, m: ["model", "add", str(t / "missing.onnx"), "--name", "d", "--version", "2"],
     2, "does not exist"),
    ("file is not onnx",
     lambda t, m: ["model", "add", _not_onnx(t), "--name", "d", "--version", "2"],
     2, "not an ONNX model"),
    ("truncated onnx",
     lambda t, m: ["model", "add", _truncated_onnx(t, m), "--name", "d", "--version", "2"],
     2, "truncated.onnx"),
    ("duplicate version",
     lambda t, m: ["model", "add", str(m), "--name", "digits", "--version", "1.0.0"],
     1, "digits:1.0.0 already exists"),
    ("sample missing",
     lambda t, m: ["model", "add", str(m), "-n", "d", "-v", "2", "--sample", str(t / "no.npz")],
     2, "does not exist"),
    ("sample of the wrong shape",
     lambda t, m: ["model", "add", str(m), "-n", "d", "-v", "2", "--sample", _wrong_sample(t)],
     2, "fails on the sample"),
    ("sample not npz",
     lambda t, m: ["model", "add", str(m), "-n", "d", "-v", "2", "--sample", _text_sample(t)],
     2, "not a readable .npz"),
    ("bad model name",
     lambda t, m: ["model", "add", str(m), "--name", "../evil", "--version", "2"],
     2, "invalid model name"),
    ("unknown model",
     lambda t, m: ["model", "show", "digits:9.9"], 2, "unknown model digits:9.9"),
    ("model ref without version",
     lambda t, m: ["model", "show", "digits"], 2, "NAME:VERSION"),
    ("unknown profile",
     lambda t, m: ["device", "add", "pi-2", "--profile", "nope"], 2, "unknown profile 'nope'"),
    ("malformed label",
     lambda t, m: ["device", "add", "pi-2", "--profile", "rpi4", "--label", "foo"],
     2, "malformed label 'foo'"),
    ("label with empty value",
     lambda t, m: ["device", "add", "pi-2", "--profile", "rpi4", "--label", "site="],
     2, "malformed label"),
    ("bad device id",
     lambda t, m: ["device", "add", "pi 2/x", "--profile", "rpi4"], 2, "invalid device id"),
    ("duplicate device",
     lambda t, m: ["device", "add", "pi-1", "--profile", "rpi4"], 1, "'pi-1' already exists"),
    ("out file exists",
     lambda t, m: ["device", "add", "pi-2", "--profile", "rpi4", "--out", str(t / "pi-1.toml")],
     2, "already exists"),
    ("unknown device show",
     lambda t, m: ["device", "show", "ghost"], 2, "unknown device 'ghost'"),
    ("unknown device remove",
     lambda t, m: ["device", "remove", "ghost", "--yes"], 2, "unknown device 'ghost'"),
    ("filter by malformed label",
     lambda t, m: ["device", "list", "--label", "foo"], 2, "malformed label"),
    ("unknown profile show",
     lambda t, m: ["profile", "show", "nope"], 2, "unknown profile"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_and_changes_nothing(
    cli: Cli,
    populated: Path,
    tmp_path: Path,
    model_file: Path,
    argv: Callable[[Path, Path], list[str]],
    code: int,
    words: str,
) -> None:
    args = argv(tmp_path, model_file)
    db = populated / "registry.db"
    rows_before = sqlite_snapshot(db)
    files_before = files_under(populated)

    result = cli(*args)

    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "one line, no traceback"
    assert result.stdout == ""
    assert sqlite_snapshot(db) == rows_before
    assert files_under(populated) == files_before


def test_unknown_command_is_a_usage_error(cli: Cli, initialised: Path) -> None:
    result = cli("device", "frobnicate")
    assert result.exit_code == 2


def test_a_broken_config_is_reported(cli: Cli, initialised: Path) -> None:
    (initialised / "config.toml").write_text("broker_url = [unclosed\n")
    result = cli("device", "list")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "not valid TOML" in result.stderr
    assert cli("device", "list", "--help").exit_code == 0  # help still works


def test_an_unknown_setting_is_reported(cli: Cli, initialised: Path) -> None:
    with (initialised / "config.toml").open("a") as fh:
        fh.write('brokr_url = "mqtt://x"\n')
    result = cli("model", "list")
    assert result.exit_code == 2
    assert "unknown setting(s): brokr_url" in result.stderr


def test_an_unreachable_database_is_a_clean_failure(
    cli: Cli, initialised: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    result = cli("device", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot open the database")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # the CLI in a subprocess
def test_the_installed_script_exits_with_the_same_codes(initialised: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = Path(sys.executable).with_name("edgefleet")
    if not script.exists():
        pytest.skip("edgefleet-controller is not installed in this environment")
    env = {**os.environ, "EDGEFLEET_HOME": str(initialised)}
    run = subprocess.run(
        [str(script), "device", "show", "ghost"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr == "error: unknown device 'ghost'\n"
