"""`edgefleet compress` against a real home folder and SQLite file, on the digits CNN:
the chosen variant is stored and recorded, `deploy` sends it, and bad input changes nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edgefleet.controller import load_settings
from edgefleet.controller.catalog import load_torch_model
from edgefleet.harness import digits_images, train_cnn, write_eval_npz
from edgefleet.shared import SmokeTest
from edgefleet.shared.errors import ConfigError

from .conftest import Cli, files_under, sqlite_snapshot

RUNS = ("--latency-runs", "5")
REPORT_KEYS = {"recipe", "size_bytes", "latency_ms_p50", "latency_ms_p95", "metric"}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Path]:
    """The trained digits CNN, its ONNX export and the eval.npz of the digits it never saw."""
    import torch

    from edgefleet.controller.compress import export_onnx

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cnn")
    module = train_cnn(seed=0, epochs=4)
    x, _ = digits_images()
    onnx_file = export_onnx(module, x, root / "digits-cnn.onnx", input_name="input", name="cnn")
    return module, onnx_file.path, write_eval_npz(root / "eval.npz")


@pytest.fixture
def registered(cli: Cli, initialised: Path, cnn: tuple[object, Path, Path]) -> Path:
    cli.ok("model", "add", str(cnn[1]), "--name", "digits", "--version", "1.0.0")
    return initialised


def _variants(home: Path) -> list[tuple[str, str | None, str, str]]:
    with sqlite3.connect(home / "registry.db") as conn:
        return conn.execute(
            "SELECT name, profile, artifact_sha256, metrics FROM variant ORDER BY id"
        ).fetchall()


def test_compress_records_the_chosen_variant_and_writes_the_report(
    cli: Cli, registered: Path, cnn: tuple[object, Path, Path], tmp_path: Path
) -> None:
    import onnxruntime as ort

    report_file = tmp_path / "report.json"
    result = cli.ok(
        "compress", "digits:1.0.0", "--profile", "x86-edge", "--data", str(cnn[2]),
        "--report", str(report_file), *RUNS,
    )  # fmt: skip
    assert "chosen" in result.stdout and "fp32.int8" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "candidate" in line)
    assert "smaller" in header and "faster" in header
    fp32_row = next(line for line in result.stdout.splitlines() if "│ fp32 " in line)
    assert fp32_row.count("1.00x") == 2  # the reference against itself
    # ONNX Runtime's calibrators print their progress; it must not reach the terminal
    assert "Collecting tensor data" not in result.stdout + result.stderr
    assert "recorded digits:1.0.0/x86-edge" in result.stdout

    (fp32, original_profile, fp32_sha, _), (name, profile, sha, metrics_text) = _variants(
        registered
    )
    assert (fp32, original_profile, name, profile) == ("fp32", None, "x86-edge", "x86-edge")
    store = load_settings(registered).artifacts_dir
    stored = store / "sha256" / sha[:2] / sha
    assert stored.is_file()
    assert stored.stat().st_size < (store / "sha256" / fp32_sha[:2] / fp32_sha).stat().st_size
    session = ort.InferenceSession(str(stored), providers=["CPUExecutionProvider"])
    x, _ = digits_images()
    assert session.run(None, {"input": x[:4]})[0].shape == (4, 10)

    metrics = json.loads(metrics_text)
    assert metrics["recipe"]["steps"] and metrics["metric"] == "top1"

    # the variant's smoke test is its own: the version's sample, the outputs this file gives
    # on it, and a tolerance at least the version's (wider for int8: see the e2e test)
    with sqlite3.connect(registered / "registry.db") as conn:
        smoke_rows = dict(conn.execute("SELECT name, smoke_test FROM variant").fetchall())
    assert json.loads(smoke_rows["fp32"]) is None  # the original keeps the version's
    version_smoke = json.loads(cli.ok("model", "show", "digits:1.0.0", "--json").stdout)[
        "smoke_test"
    ]
    own = SmokeTest.model_validate_json(smoke_rows["x86-edge"])
    assert own.inputs == SmokeTest.model_validate(version_smoke).inputs
    got = session.run(None, {n: t.to_numpy() for n, t in own.inputs.items()})
    assert np.array_equal(got[0], own.outputs["output"].to_numpy())
    assert own.atol >= version_smoke["atol"] and own.rtol == version_smoke["rtol"]
    assert metrics["drop"] <= 0.005 and metrics["size_bytes"] == stored.stat().st_size

    report = json.loads(report_file.read_text())
    for key in ("reference", "chosen"):
        assert set(report[key]) >= REPORT_KEYS
    assert report["chosen"]["name"] == metrics["candidate"]
    assert report["variant"]["sha256"] == sha
    assert len(report["candidates"]) >= 3
    assert all(set(c) >= REPORT_KEYS for c in report["candidates"])
    assert report["reference"]["recipe"] == {"steps": []}

    # compressing again replaces the profile's variant rather than adding one
    out = cli.ok(
        "compress", "digits:1.0.0", "-p", "x86-edge", "--data", str(cnn[2]), "--json", *RUNS
    )
    again = json.loads(out.stdout)
    assert again["profile"] == "x86-edge" and set(again["chosen"]) >= REPORT_KEYS
    rows = _variants(registered)
    assert [(r[0], r[1]) for r in rows] == [("fp32", None), ("x86-edge", "x86-edge")]
    assert rows[1][2] == again["variant"]["sha256"]


def test_a_float_files_smoke_test_keeps_the_versions_tolerance(
    cnn: tuple[object, Path, Path],
) -> None:
    """Float kernels agree with ONNX Runtime's unoptimised run to rounding: next to no room
    is added."""
    from edgefleet.controller.catalog import inspect_model, variant_smoke_test

    reference = inspect_model(cnn[1]).smoke_test
    own = variant_smoke_test(cnn[1], reference)
    assert reference.atol <= own.atol < 1.5 * reference.atol
    for name, expected in reference.outputs.items():
        assert np.allclose(own.outputs[name].to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-6)


def test_deploy_sends_each_device_the_variant_for_its_profile(
    cli: Cli, registered: Path, cnn: tuple[object, Path, Path]
) -> None:
    cli.ok("compress", "digits:1.0.0", "-p", "x86-edge", "--data", str(cnn[2]), *RUNS)
    cli.ok("device", "add", "box-1", "--profile", "x86-edge", "-l", "site=lab")
    cli.ok("device", "add", "pi-1", "--profile", "rpi4", "-l", "site=lab")

    rows = json.loads(cli.ok("deploy", "digits:1.0.0", "--label", "site=lab", "--json").stdout)

    assert {r["device"]: r["model"] for r in rows} == {
        "box-1": "digits:1.0.0/x86-edge",
        "pi-1": "digits:1.0.0/fp32",
    }
    with sqlite3.connect(registered / "registry.db") as conn:
        sent = dict(
            conn.execute(
                "SELECT device.name, variant.profile FROM deployment "
                "JOIN device ON device.id = deployment.device_id "
                "JOIN variant ON variant.id = deployment.variant_id"
            ).fetchall()
        )
    assert sent == {"box-1": "x86-edge", "pi-1": None}


def _garbage_npz(tmp: Path) -> str:
    path = tmp / "garbage.npz"
    path.write_text("not a zip file")
    return str(path)


def _wrong_shape_npz(tmp: Path) -> str:
    path = tmp / "flat.npz"
    x, y = digits_images()
    np.savez(path, inputs=x[:50].reshape(50, 64), labels=y[:50])
    return str(path)


def _extra_array_npz(tmp: Path) -> str:
    path = tmp / "extra.npz"
    x, y = digits_images()
    np.savez(path, inputs=x[:50], labels=y[:50], images=x[:50])
    return str(path)


def _home_profile(
    home: Path, name: str, *, max_size_bytes: int, passes: list[str], objective: str = ""
) -> str:
    """A one-core x86 profile in the home folder's profiles/, with a loose latency and drop
    budget; returns its name."""
    text = (
        f'name = "{name}"\narch = "x86_64"\ncores = 1\nram_mb = 512\n'
        f"[budgets]\nmax_size_bytes = {max_size_bytes}\nmax_latency_ms = 100.0\n"
        f"max_accuracy_drop = 0.5\n[compression]\npasses = {json.dumps(passes)}\n"
    )
    if objective:
        text += f'objective = "{objective}"\n'
    (home / "profiles" / f"{name}.toml").write_text(text)
    return name


def _no_passes_profile(home: Path) -> str:
    return _home_profile(home, "bare", max_size_bytes=1_000_000_000, passes=[])


def _tiny_profile(home: Path) -> str:
    return _home_profile(home, "tiny", max_size_bytes=1000, passes=["int8_dynamic"])


# (case, argv after `compress digits:1.0.0`, exit code, words expected on stderr)
CASES = [
    ("unreadable npz",
     lambda t, h, d: ["-p", "x86-edge", "--data", _garbage_npz(t)], 2, "not a readable .npz"),
    ("missing npz",
     lambda t, h, d: ["-p", "x86-edge", "--data", str(t / "nope.npz")], 2, "does not exist"),
    ("inputs of the wrong shape",
     lambda t, h, d: ["-p", "x86-edge", "--data", _wrong_shape_npz(t)], 2,
     "digits:1.0.0's 'input' wants [N, 1, 8, 8]"),
    ("an array that is not an input",
     lambda t, h, d: ["-p", "x86-edge", "--data", _extra_array_npz(t)], 2,
     "not inputs of digits:1.0.0: 'images'"),
    ("worst-row budget with top1",
     lambda t, h, d: ["-p", "x86-edge", "--data", d, "--max-worst-drop", "0.01"], 2,
     "worst-row budget needs the cosine or mse metric"),
    ("unknown metric",
     lambda t, h, d: ["-p", "x86-edge", "--data", d, "--metric", "f1"], 2, "f1"),
    ("unknown profile",
     lambda t, h, d: ["-p", "nope", "--data", d], 2, "unknown profile 'nope'"),
    ("profile allowing nothing",
     lambda t, h, d: ["-p", _no_passes_profile(h), "--data", d], 2, "allows no compression"),
    ("no candidate fits",
     lambda t, h, d: ["-p", _tiny_profile(h), "--data", d, *RUNS], 1, "closest"),
    ("max drop out of range",
     lambda t, h, d: ["-p", "x86-edge", "--data", d, "--max-drop", "3"], 2, "max drop"),
    ("bad torch source",
     lambda t, h, d: ["-p", "x86-edge", "--data", d, "--torch", "no_such_module:f"], 2,
     "no_such_module"),
    ("torch state without torch",
     lambda t, h, d: ["-p", "x86-edge", "--data", d, "--torch-state", d], 2, "needs --torch"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_and_changes_nothing(
    cli: Cli,
    registered: Path,
    cnn: tuple[object, Path, Path],
    tmp_path: Path,
    argv: object,
    code: int,
    words: str,
) -> None:
    args = argv(tmp_path, registered, str(cnn[2]))  # type: ignore[operator]
    db = registered / "registry.db"
    rows_before = sqlite_snapshot(db)
    files_before = files_under(load_settings(registered).artifacts_dir)

    result = cli("compress", "digits:1.0.0", *args)

    assert result.exit_code == code, result.output
    assert "error: " in result.stderr and words in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert sqlite_snapshot(db) == rows_before
    assert files_under(load_settings(registered).artifacts_dir) == files_before


def test_no_fit_names_the_closest_candidates_and_their_budgets(
    cli: Cli, registered: Path, cnn: tuple[object, Path, Path]
) -> None:
    result = cli("compress", "digits:1.0.0", "-p", _tiny_profile(registered), "--data",
                 str(cnn[2]), *RUNS)  # fmt: skip
    assert result.exit_code == 1
    # no VNNI in the profile, so int8 is quantised with reduce-range ("-rr")
    assert "fp32.int8dyn-rr: size" in result.stderr and "> 1,000 B" in result.stderr
    assert "fp32: size" in result.stderr


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_sources_load(cnn: tuple[object, Path, Path], tmp_path: Path) -> None:
    import torch

    module = cnn[0]
    state = tmp_path / "state.pt"
    torch.save(module.state_dict(), state)  # type: ignore[attr-defined]
    loaded = load_torch_model("edgefleet.harness:build_cnn", state)
    x = torch.from_numpy(digits_images()[0][:4])
    assert torch.allclose(loaded(x), module(x))  # type: ignore[operator]

    scripted = tmp_path / "cnn.pt"
    torch.jit.script(module).save(str(scripted))
    assert torch.allclose(load_torch_model(str(scripted))(x), module(x))  # type: ignore[operator]

    (tmp_path / "junk.pt").write_text("junk")
    for source, state_file in (
        (str(tmp_path / "junk.pt"), None),
        ("edgefleet.harness:digits_images", None),
        ("edgefleet.harness:build_cnn", tmp_path / "missing.pt"),
        ("edgefleet.harness:build_cnn", tmp_path / "junk.pt"),
        ("just-a-name", None),
    ):
        with pytest.raises(ConfigError):
            load_torch_model(source, state_file)


def test_the_profiles_objective_decides(
    cli: Cli, registered: Path, cnn: tuple[object, Path, Path]
) -> None:
    small = _home_profile(
        registered, "small", max_size_bytes=100_000_000, passes=["graph_opt", "int8_dynamic"],
        objective="size",
    )  # fmt: skip
    out = cli.ok("compress", "digits:1.0.0", "-p", small, "--data", str(cnn[2]), "--json",
                 *RUNS)  # fmt: skip
    report = json.loads(out.stdout)
    assert report["objective"] == "size"
    fitting = [c for c in report["candidates"] if not c["breaches"]]
    assert report["chosen"]["size_bytes"] == min(c["size_bytes"] for c in fitting)
    assert report["chosen"]["recipe"]["steps"]  # an int8 file, not fp32
