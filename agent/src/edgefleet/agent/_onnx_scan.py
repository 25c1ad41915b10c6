"""Find external-data references in an ONNX file without the onnx package.

A tensor whose ``data_location`` is EXTERNAL (or that lists ``external_data``)
asks the runtime to read another file. The agent refuses such models; this
walks the protobuf wire format just far enough to find them.
"""

from __future__ import annotations

from collections.abc import Iterator

# field numbers from onnx.proto3
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise _Malformed
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed


def _sub(buf: memoryview, wanted: set[int]) -> Iterator[tuple[int, memoryview]]:
    for number, wire, value in _fields(buf):
        if wire == 2 and number in wanted and isinstance(value, memoryview):
            yield number, value


def _tensor(buf: memoryview, found: set[str]) -> None:
    name, external = "", False
    for number, wire, value in _fields(buf):
        if number == _TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif (number == _TENSOR_EXTERNAL_DATA and wire == 2) or (
            number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL
        ):
            external = True
    if external:
        found.add(name or "<unnamed tensor>")


def _sparse(buf: memoryview, found: set[str]) -> None:
    for _, value in _sub(buf, {_SPARSE_VALUES, _SPARSE_INDICES}):
        _tensor(value, found)


def _graph(buf: memoryview, found: set[str], depth: int) -> None:
    if depth > 32:
        raise _Malformed
    for number, value in _sub(buf, {_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER}):
        if number == _GRAPH_INITIALIZER:
            _tensor(value, found)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            _sparse(value, found)
        else:
            for _, attr in _sub(value, {_NODE_ATTRIBUTE}):
                _attribute(attr, found, depth)


def _attribute(buf: memoryview, found: set[str], depth: int) -> None:
    wanted = {
        _ATTR_T,
        _ATTR_G,
        _ATTR_TENSORS,
        _ATTR_GRAPHS,
        _ATTR_SPARSE_TENSOR,
        _ATTR_SPARSE_TENSORS,
    }
    for number, value in _sub(buf, wanted):
        if number in (_ATTR_T, _ATTR_TENSORS):
            _tensor(value, found)
        elif number in (_ATTR_G, _ATTR_GRAPHS):
            _graph(value, found, depth + 1)
        else:
            _sparse(value, found)


def find_external_data(model: bytes) -> set[str]:
    """Names of tensors that point at external files; empty when there are none.

    A file that is not valid protobuf yields an empty set: ONNX Runtime will
    refuse it with its own message.
    """
    found: set[str] = set()
    try:
        for _, graph in _sub(memoryview(model), {_MODEL_GRAPH}):
            _graph(graph, found, 0)
    except _Malformed:
        return set()
    return found
