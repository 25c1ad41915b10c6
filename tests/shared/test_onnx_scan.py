"""The one external-data scan: a model hiding a reference in each place the runtime may
read a tensor from is refused by the scan, by the agent's loader and by `edgefleet model
add`. Models are built with the onnx package; the side file they point at exists, so
without the scan ONNX Runtime would read it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from typer.testing import CliRunner, Result

from edgefleet.agent._runtime import load_model
from edgefleet.controller.cli import app
from edgefleet.shared import ModelRef, RuntimeSettings, find_external_data
from edgefleet.shared.errors import ExternalDataError, ModelLoadError

SIDE_FILE = "w.bin"
ONES = np.ones((1, 4), dtype=np.float32)
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])


def _external(name: str, values: np.ndarray = ONES) -> TensorProto:
    """A tensor whose bytes live at the start of SIDE_FILE."""
    tensor = numpy_helper.from_array(values, name)
    set_external_data(tensor, location=SIDE_FILE, offset=0, length=values.nbytes)
    tensor.ClearField("raw_data")
    return tensor


def _model(nodes, *, initializers=(), sparse=(), functions=(), opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [X], [Y], initializer=list(initializers), sparse_initializer=list(sparse)
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), *opsets],
        functions=list(functions),
        ir_version=8,
    )


def _add_c(*before: onnx.NodeProto) -> list[onnx.NodeProto]:
    return [*before, helper.make_node("Add", ["x", "c"], ["y"])]


def in_initializer() -> onnx.ModelProto:
    return _model(_add_c(), initializers=[_external("c")])


def in_sparse_initializer() -> onnx.ModelProto:
    values = _external("c_values", np.ones(4, dtype=np.float32))
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "c_indices")
    sparse = helper.make_sparse_tensor(values, indices, [1, 4])
    return _model(_add_c(), sparse=[sparse])


def in_constant_node() -> onnx.ModelProto:
    return _model(_add_c(helper.make_node("Constant", [], ["c"], value=_external("k"))))


def in_another_nodes_tensor_attribute() -> onnx.ModelProto:
    shape = helper.make_node(
        "Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, 4], np.int64))
    )
    fill = helper.make_node(
        "ConstantOfShape", ["shape"], ["c"], value=_external("v", np.ones(1, np.float32))
    )
    return _model(_add_c(shape, fill))


def in_if_branch() -> onnx.ModelProto:
    def branch(name: str, tensor: TensorProto) -> onnx.GraphProto:
        out = helper.make_tensor_value_info("c_" + name, TensorProto.FLOAT, [1, 4])
        const = helper.make_node("Constant", [], ["c_" + name], value=tensor)
        return helper.make_graph([const], name, [], [out])

    cond = helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True)))
    choose = helper.make_node(
        "If",
        ["cond"],
        ["c"],
        then_branch=branch("then", _external("k")),
        else_branch=branch("else", numpy_helper.from_array(ONES, "plain")),
    )
    return _model(_add_c(cond, choose))


def in_loop_body_initializer() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "c"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4]),
        ],
        initializer=[_external("c")],
    )
    inits = [
        numpy_helper.from_array(np.array(1, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "go"),
    ]
    loop = helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)
    return _model([loop], initializers=inits)


def in_model_local_function(constant: TensorProto | None = None) -> onnx.ModelProto:
    function = helper.make_function(
        "local",
        "AddC",
        ["X"],
        ["Y"],
        [
            helper.make_node("Constant", [], ["c"], value=constant or _external("k")),
            helper.make_node("Add", ["X", "c"], ["Y"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    call = helper.make_node("AddC", ["x"], ["y"], domain="local")
    return _model([call], functions=[function], opsets=[helper.make_opsetid("local", 1)])


def in_function_default_attribute() -> onnx.ModelProto:
    model = in_model_local_function(numpy_helper.from_array(ONES, "k"))
    model.functions[0].attribute_proto.append(helper.make_attribute("bias", _external("d")))
    return model


def in_training_graph() -> onnx.ModelProto:
    model = _model(_add_c(), initializers=[numpy_helper.from_array(ONES, "c")])
    model.training_info.add().initialization.CopyFrom(
        helper.make_graph([], "init", [], [], initializer=[_external("t")])
    )
    return model


HIDING_PLACES: list[Callable[[], onnx.ModelProto]] = [
    in_initializer,
    in_sparse_initializer,
    in_constant_node,
    in_another_nodes_tensor_attribute,
    in_if_branch,
    in_loop_body_initializer,
    in_model_local_function,
    in_function_default_attribute,
    in_training_graph,
]


def _write(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SIDE_FILE).write_bytes(ONES.tobytes())
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _clean() -> onnx.ModelProto:
    return _model(_add_c(), initializers=[numpy_helper.from_array(ONES, "c")])


@pytest.mark.parametrize("build", HIDING_PLACES, ids=lambda b: b.__name__)
def test_the_scan_finds_each_hiding_place(build: Callable[[], onnx.ModelProto]) -> None:
    found = find_external_data(build().SerializeToString())
    assert len(found) == 1, found


def test_a_model_that_keeps_everything_inside_passes() -> None:
    for model in (_clean(), in_if_branch()):
        for tensor in _all_tensors(model):
            tensor.ClearField("data_location")
            del tensor.external_data[:]
        assert find_external_data(model.SerializeToString()) == []


def _all_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            tensors += [attr.t] if attr.HasField("t") else []
            for graph in [attr.g] if attr.HasField("g") else []:
                tensors += [n.attribute[0].t for n in graph.node]
    return tensors


@pytest.mark.parametrize(
    "data",
    [
        b"\x0f",  # wire type 7
        b"\x3a\x05ab",  # a graph field longer than the file
        b"\x3a\x02\x0a",  # a node running past its graph
        b"\x1b\x08\x01",  # a group that never ends
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
        b"\x00\x00",  # field number 0
    ],
)
def test_bytes_it_cannot_walk_are_refused_not_passed(data: bytes) -> None:
    with pytest.raises(ModelLoadError):
        find_external_data(data)


def test_a_reference_behind_an_unknown_group_field_is_still_found() -> None:
    # protobuf skips unknown groups; a scan that gave up on them would pass what follows
    group = b"\x1b\x08\x01\x1c"  # field 3 start, a varint inside, field 3 end
    assert find_external_data(group + in_constant_node().SerializeToString())


def test_subgraphs_nested_too_deep_are_refused() -> None:
    leaf = graph = helper.make_graph([], "leaf", [], [])
    for _ in range(28):
        node = helper.make_node("If", ["c"], ["o"], then_branch=graph, else_branch=leaf)
        graph = helper.make_graph([node], "g", [], [])
    model = helper.make_model(graph)
    with pytest.raises(ModelLoadError, match="nested deeper"):
        find_external_data(model.SerializeToString())


@pytest.mark.parametrize("build", HIDING_PLACES, ids=lambda b: b.__name__)
def test_the_agent_refuses_each(build: Callable[[], onnx.ModelProto], tmp_path: Path) -> None:
    path = _write(build(), tmp_path)
    with pytest.raises(ExternalDataError):
        load_model(
            path,
            ref=ModelRef(name="m", version="1"),
            deployment_id="d",
            sha256="0" * 64,
            runtime=RuntimeSettings(),
        )


def test_the_agent_loads_the_clean_model(tmp_path: Path) -> None:
    path = _write(_clean(), tmp_path)
    model = load_model(
        path, ref=ModelRef(name="m", version="1"), deployment_id="d", sha256="0" * 64,
        runtime=RuntimeSettings(),
    )  # fmt: skip
    assert [i.name for i in model.inputs] == ["x"]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    for var in ("EDGEFLEET_DATABASE_URL", "EDGEFLEET_BROKER_URL", "EDGEFLEET_ARTIFACT_URL"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, list(args), catch_exceptions=False)

    assert run("init").exit_code == 0
    return run


@pytest.mark.parametrize("build", HIDING_PLACES, ids=lambda b: b.__name__)
def test_model_add_refuses_each(
    build: Callable[[], onnx.ModelProto], cli: Callable[..., Result], tmp_path: Path
) -> None:
    path = _write(build(), tmp_path / "in")
    result = cli("model", "add", str(path), "--name", "m", "--version", "1.0.0")
    assert result.exit_code != 0, result.output
    assert "external files" in result.stderr
    assert cli("model", "list", "--json").stdout.strip() in ("", "[]")
