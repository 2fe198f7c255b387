"""SageMaker's RecordIO-protobuf: RecordIO frames (magic 0xCED7230A, a little-endian word of
`(flag << 29) | length`, the payload padded to 4 bytes; flags 1/2/3 for the parts of a long
record), each holding a protobuf `Record` whose `features["values"]` and `label["values"]`
are tensors (float32, float64 or int32; sparse when `keys` is set, with `shape`). Decoded
here from the wire format, so the stand-in needs no generated protobuf code."""

import struct

import numpy as np
import scipy.sparse

MAGIC = 0xCED7230A


def frames(data):
    """Every record's payload, multipart records joined."""
    at, parts = 0, None
    while at + 8 <= len(data):
        magic, word = struct.unpack_from("<II", data, at)
        if magic != MAGIC:
            raise ValueError(f"no RecordIO magic at byte {at}")
        flag, length = word >> 29, word & ((1 << 29) - 1)
        start = at + 8
        payload = data[start:start + length]
        if len(payload) < length:
            raise ValueError(f"a record at byte {at} is cut short")
        at = start + length + (-length % 4)
        if flag == 0:
            yield payload
        elif flag == 1:
            parts = [payload]
        elif flag == 2 and parts is not None:
            parts.append(payload)
        elif flag == 3 and parts is not None:
            parts.append(payload)
            yield b"".join(parts)
            parts = None
        else:
            raise ValueError(f"a multipart record at byte {at} is out of order")
    if at != len(data):
        raise ValueError("trailing bytes after the last record")


def _varint(buf, at):
    shift = result = 0
    while True:
        if at >= len(buf):
            raise ValueError("a varint runs past the end of a record")
        b = buf[at]
        at += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, at
        shift += 7


def fields(buf):
    """(field number, wire type, value) of a message: ints for varints, bytes otherwise."""
    at = 0
    while at < len(buf):
        key, at = _varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(buf, at)
        elif wire == 1:
            value, at = buf[at:at + 8], at + 8
        elif wire == 2:
            length, at = _varint(buf, at)
            value, at = buf[at:at + length], at + length
        elif wire == 5:
            value, at = buf[at:at + 4], at + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _repeated(entries, fmt, size):
    out = []
    for wire, value in entries:
        if wire == 2 and fmt is not None:
            out.extend(struct.unpack(f"<{len(value) // size}{fmt}", value))
        elif wire == 2:
            at = 0
            while at < len(value):
                v, at = _varint(value, at)
                out.append(v)
        elif fmt is None:
            out.append(value)
        else:
            out.append(struct.unpack(f"<{fmt}", value)[0])
    return out


def tensor(value_message):
    """A `Value`'s tensor as (values, keys, shape)."""
    for number, wire, body in fields(value_message):
        if number in (2, 3, 7) and wire == 2:
            fmt, size = {2: ("f", 4), 3: ("d", 8), 7: (None, 0)}[number]
            by_field = {1: [], 2: [], 3: []}
            for n, w, v in fields(body):
                if n in by_field:
                    by_field[n].append((w, v))
            values = _repeated(by_field[1], fmt, size)
            if number == 7:
                values = [v - (1 << 32) if v >= 1 << 31 else v for v in values]
            return values, _repeated(by_field[2], None, 0), _repeated(by_field[3], None, 0)
    raise ValueError("a value holds no tensor")


def record(payload):
    """A `Record`'s features and label maps: name → (values, keys, shape)."""
    maps = {1: {}, 2: {}}
    for number, wire, body in fields(payload):
        if number in maps and wire == 2:
            key, value = None, None
            for n, w, v in fields(body):
                if n == 1:
                    key = bytes(v).decode("utf-8")
                elif n == 2:
                    value = v
            if key is not None and value is not None:
                maps[number][key] = tensor(value)
    return maps[1], maps[2]


def read_records(data):
    """The records' feature matrix (CSR when any record is sparse) and labels (or None)."""
    rows, labels, sparse, width = [], [], False, 0
    for payload in frames(data):
        features, label = record(payload)
        if "values" not in features:
            raise ValueError("a record has no features['values']")
        values, keys, shape = features["values"]
        if keys:
            sparse = True
            width = max(width, shape[0] if shape else max(keys) + 1)
        else:
            width = max(width, len(values))
        rows.append((values, keys))
        if "values" in label:
            labels.append(label["values"][0][0])
    if sparse:
        indptr, indices, data_values = [0], [], []
        for values, keys in rows:
            indices.extend(keys if keys else range(len(values)))
            data_values.extend(values)
            indptr.append(len(indices))
        features = scipy.sparse.csr_matrix((data_values, indices, indptr), shape=(len(rows), width))
    else:
        features = np.array([values for values, _ in rows], dtype=np.float64)
    return features, (np.array(labels, dtype=np.float64) if len(labels) == len(rows) and rows else None)
