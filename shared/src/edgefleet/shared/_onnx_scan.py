"""Find every external-data reference in an ONNX file, without the onnx package.

A tensor whose ``data_location`` is EXTERNAL (or that lists ``external_data``) asks the
runtime to read another file; both the controller (``model add``) and the agent refuse
such models, with this one scan. It walks the protobuf wire format far enough to reach
every tensor the runtime may load: graph initializers (dense and sparse), tensor
attributes of any node (``Constant`` among them), subgraphs (If/Loop/Scan bodies),
model-local functions (their nodes and default attributes) and training graphs.

It fails closed: bytes it cannot walk raise ``ModelLoadError`` instead of passing as
"no external data", so a file cannot hide a reference behind something the scan skips.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import ModelLoadError

# Subgraphs nested deeper than this are refused: real models nest a handful of levels, and
# protobuf itself stops at 100 nested messages (three per level: graph, node, attribute).
MAX_GRAPH_DEPTH = 24

# field numbers from onnx.proto; tests/shared/test_onnx_scan.py hides a reference in each place
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_INITIALIZATION, _TRAINING_ALGORITHM = 1, 2
_FUNCTION_NAME, _FUNCTION_NODE, _FUNCTION_ATTRIBUTE_PROTO = 1, 7, 11
_GRAPH_NODE, _GRAPH_NAME, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 2, 5, 15
_NODE_NAME, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 3, 4, 5
_ATTR_NAME, _ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 1, 5, 6, 10, 11
_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("a number runs past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _skip_group(buf: memoryview, pos: int, number: int, depth: int) -> int:
    """Skip a (deprecated but still parsed) group up to its matching end tag."""
    if depth > 64:
        raise _Malformed("groups nested too deep")
    while True:
        key, pos = _varint(buf, pos)
        inner, wire = key >> 3, key & 7
        if wire == _END_GROUP:
            if inner != number:
                raise _Malformed("a group ends with the wrong tag")
            return pos
        pos = _skip(buf, pos, inner, wire, depth + 1)


def _skip(buf: memoryview, pos: int, number: int, wire: int, depth: int = 0) -> int:
    if wire == _VARINT:
        return _varint(buf, pos)[1]
    if wire == _FIXED64:
        pos += 8
    elif wire == _FIXED32:
        pos += 4
    elif wire == _LENGTH:
        length, pos = _varint(buf, pos)
        pos += length
    elif wire == _START_GROUP:
        return _skip_group(buf, pos, number, depth)
    else:
        raise _Malformed(f"wire type {wire} where none is allowed")
    if pos > len(buf):
        raise _Malformed("a field runs past the end")
    return pos


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Each field as (number, wire type, value): an int for varints, the bytes for
    length-delimited fields, 0 for the rest (skipped)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == _LENGTH:
            length, start = _varint(buf, pos)
            pos = start + length
            if pos > len(buf):
                raise _Malformed("a field runs past the end")
            yield number, wire, buf[start:pos]
        else:
            pos = _skip(buf, pos, number, wire)


def _messages(buf: memoryview, wanted: set[int]) -> Iterator[tuple[int, memoryview]]:
    for number, wire, value in _fields(buf):
        if wire == _LENGTH and number in wanted and isinstance(value, memoryview):
            yield number, value


def _text(buf: memoryview, field: int) -> str:
    name = ""
    for number, _, value in _fields(buf):
        if number == field and isinstance(value, memoryview):
            name = bytes(value[:200]).decode("utf-8", "replace")
    return name


class _Scan:
    def __init__(self) -> None:
        self.found: list[str] = []

    def tensor(self, buf: memoryview, where: str) -> None:
        name, external = "", False
        for number, wire, value in _fields(buf):
            if number == _TENSOR_NAME and isinstance(value, memoryview):
                name = bytes(value[:200]).decode("utf-8", "replace")
            elif (number == _TENSOR_EXTERNAL_DATA and wire == _LENGTH) or (
                number == _TENSOR_DATA_LOCATION and wire == _VARINT and value == _EXTERNAL
            ):
                external = True
        if external:
            self.found.append(f"{where} {name!r}" if name else where)

    def sparse(self, buf: memoryview, where: str) -> None:
        for _, value in _messages(buf, {_SPARSE_VALUES, _SPARSE_INDICES}):
            self.tensor(value, where)

    def graph(self, buf: memoryview, where: str, depth: int) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise _Malformed(f"subgraphs nested deeper than {MAX_GRAPH_DEPTH} levels")
        wanted = {_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER}
        for number, value in _messages(buf, wanted):
            if number == _GRAPH_INITIALIZER:
                self.tensor(value, f"{where}: initializer")
            elif number == _GRAPH_SPARSE_INITIALIZER:
                self.sparse(value, f"{where}: sparse initializer")
            else:
                self.node(value, where, depth)

    def node(self, buf: memoryview, where: str, depth: int) -> None:
        label = _text(buf, _NODE_NAME) or _text(buf, _NODE_OP_TYPE) or "?"
        for _, attr in _messages(buf, {_NODE_ATTRIBUTE}):
            self.attribute(attr, f"{where}: node {label!r}", depth)

    def attribute(self, buf: memoryview, where: str, depth: int) -> None:
        here = f"{where} attribute {_text(buf, _ATTR_NAME)!r}"
        wanted = {
            _ATTR_T,
            _ATTR_G,
            _ATTR_TENSORS,
            _ATTR_GRAPHS,
            _ATTR_SPARSE_TENSOR,
            _ATTR_SPARSE_TENSORS,
        }
        for number, value in _messages(buf, wanted):
            if number in (_ATTR_T, _ATTR_TENSORS):
                self.tensor(value, here)
            elif number in (_ATTR_G, _ATTR_GRAPHS):
                self.graph(value, f"{here} subgraph", depth + 1)
            else:
                self.sparse(value, here)

    def function(self, buf: memoryview) -> None:
        where = f"function {_text(buf, _FUNCTION_NAME)!r}"
        for number, value in _messages(buf, {_FUNCTION_NODE, _FUNCTION_ATTRIBUTE_PROTO}):
            if number == _FUNCTION_NODE:
                self.node(value, where, 1)
            else:
                self.attribute(value, f"{where} default", 1)

    def model(self, buf: memoryview) -> None:
        wanted = {_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS}
        for number, value in _messages(buf, wanted):
            if number == _MODEL_GRAPH:
                self.graph(value, "graph", 0)
            elif number == _MODEL_FUNCTIONS:
                self.function(value)
            else:
                for _, graph in _messages(value, {_TRAINING_INITIALIZATION, _TRAINING_ALGORITHM}):
                    self.graph(graph, "training graph", 0)


def find_external_data(model: bytes) -> list[str]:
    """Where the ONNX file ``model`` points at external files, in file order; empty when
    it keeps everything inside. Raises ``ModelLoadError`` for bytes that are not a
    protobuf message the scan can walk."""
    scan = _Scan()
    try:
        scan.model(memoryview(model))
    except _Malformed as exc:
        raise ModelLoadError(f"not an ONNX protobuf file ({exc})") from None
    return scan.found
