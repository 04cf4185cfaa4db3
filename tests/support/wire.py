"""Protocol buffers wire format by hand, and field numbers read from Talos's published proto.

Wire tests encode one side with this module and nothing of the project's (`imaged.pb` is not
imported here), so a wrong field number in `protos/` cannot agree with itself: the bytes are
written as the contract says, from numbers parsed out of the seed proto
(`tests/fixtures/seeds/talos-image.proto.txt`, Talos's `machine/image.proto`) or, for the
`common` package the seed imports, from Talos's `common/common.proto` as quoted below.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from tests.conftest import FIXTURES

SEED = FIXTURES / "seeds" / "talos-image.proto.txt"

# Talos api/common/common.proto, the parts machine/image.proto uses (not in the seed file).
COMMON = {
    "ContainerdInstance": {"driver": 1, "namespace": 2},
    "Data": {"metadata": 1, "bytes": 2},
    "Metadata": {"hostname": 1, "error": 2, "status": 3},
}
DRIVER = {"CONTAINERD": 0, "CRI": 1}
NAMESPACE = {"NS_UNKNOWN": 0, "NS_SYSTEM": 1, "NS_CRI": 2}
# talosctl's --namespace values (cmd/talosctl image.go, containerdInstance()).
TALOSCTL_INSTANCES = {
    "cri": (DRIVER["CRI"], NAMESPACE["NS_CRI"]),
    "system": (DRIVER["CRI"], NAMESPACE["NS_SYSTEM"]),
    "inmem": (DRIVER["CONTAINERD"], NAMESPACE["NS_SYSTEM"]),
}

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

_FIELD = re.compile(r"^\s*(?:repeated\s+)?(map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")
_BLOCK = re.compile(r"^\s*(message|enum|oneof|service)\s+(\w+)\s*\{")


@functools.cache
def seed_fields() -> dict[str, dict[str, int]]:
    """message name -> {field name: number}, parsed from the seed proto (oneof members included)."""
    text = SEED.read_text()
    text = text[text.index('syntax = "proto3";') :]
    out: dict[str, dict[str, int]] = {}
    stack: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.split("//", 1)[0]
        if m := _BLOCK.match(line):
            stack.append((m.group(1), m.group(2)))
            if m.group(1) == "message":
                out.setdefault(m.group(2), {})
            continue
        if (m := _FIELD.match(line)) and stack:
            messages = [name for kind, name in stack if kind == "message"]
            if stack[-1][0] in ("message", "oneof") and messages:
                out[messages[-1]][m.group(2)] = int(m.group(3))
        for _ in range(line.count("}")):
            if stack:
                stack.pop()
    return out


def number(message: str, name: str) -> int:
    fields = COMMON.get(message) or seed_fields()[message]
    return fields[name]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, value: int | bytes | str) -> bytes:
    """One field: an int as a varint, bytes or str as length-delimited (a submessage is bytes)."""
    if isinstance(value, int):
        return varint(num << 3 | VARINT) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(num << 3 | LEN) + varint(len(data)) + data


def message(message_name: str, /, **values: int | bytes | str) -> bytes:
    """A message of the contract by field names, e.g. message("ImageServiceRemoveRequest", image_ref=...)."""
    return b"".join(field(number(message_name, k), v) for k, v in values.items())


def instance(driver: int, namespace: int) -> bytes:
    return message("ContainerdInstance", driver=driver, namespace=namespace)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


@dataclass(frozen=True)
class Field:
    num: int
    wire: int
    value: int | bytes


def decode(buf: bytes) -> list[Field]:
    """Every field of one message, in order; raises on malformed input."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        num, wire = key >> 3, key & 7
        value: int | bytes
        if wire == VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == LEN:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
            if len(value) != size:
                raise ValueError("truncated length-delimited field")
        elif wire == FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append(Field(num, wire, value))
    return out


def fields_by_name(name: str, buf: bytes) -> dict[str, list[int | bytes]]:
    """Decode `buf` as message `name` of the contract: field name -> values (unknown numbers fail)."""
    numbers = {v: k for k, v in (COMMON.get(name) or seed_fields()[name]).items()}
    out: dict[str, list[int | bytes]] = {}
    for f in decode(buf):
        assert f.num in numbers, f"field {f.num} is not in the contract's {name} ({numbers})"
        out.setdefault(numbers[f.num], []).append(f.value)
    return out


def one(fields: dict[str, list[int | bytes]], name: str) -> int | bytes:
    values = fields[name]
    assert len(values) == 1, (name, values)
    return values[0]


def text(fields: dict[str, list[int | bytes]], name: str, default: str = "") -> str:
    if name not in fields:
        return default
    value = one(fields, name)
    assert isinstance(value, bytes), (name, value)
    return value.decode()
