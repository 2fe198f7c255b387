"""Reads SageMaker RecordIO (a Pipe mode channel's bytes) written from the format, not from
smlocal: magic 0xCED7230A LE, then (flag << 29) | length LE, the payload, zeros to 4 bytes;
flags 1/2/3 are the first/middle/last parts of one record, joined as they are.
Prints a JSON list: per record its size, its parts' flags, and its bytes (hex) up to 1 MiB,
else the first and last 16 bytes. When every record is whole, the SageMaker SDK's own
reader (sagemaker.amazon.common.read_recordio) must agree."""
import json
import struct
import sys

MAGIC = 0xCED7230A


def records(f):
    out, current, flags = [], [], []
    size = 0
    while True:
        head = f.read(8)
        if not head:
            break
        assert len(head) == 8, "a cut header"
        magic, word = struct.unpack("<II", head)
        assert magic == MAGIC, "bad magic %#x" % magic
        flag, length = word >> 29, word & ((1 << 29) - 1)
        flags.append(flag)
        if length <= 1 << 20:
            current.append(f.read(length))
        else:
            first = f.read(16)
            f.seek(length - 32, 1)
            last = f.read(16)
            current.append((first, last))
        size += length
        pad = (4 - length % 4) % 4
        assert f.read(pad) == b"\0" * pad, "padding is not zeros"
        if flag in (0, 3):
            whole = all(isinstance(c, bytes) for c in current)
            if whole:
                data = b"".join(current)
                item = {"size": size, "flags": flags, "hex": data.hex()}
            else:
                first = current[0] if isinstance(current[0], bytes) else current[0][0]
                last = current[-1] if isinstance(current[-1], bytes) else current[-1][1]
                item = {"size": size, "flags": flags, "head": first[:16].hex(), "tail": last[-16:].hex()}
            out.append(item)
            current, flags, size = [], [], 0
        else:
            assert flag in (1, 2), "flag %d" % flag
    assert not current, "a multipart record without its last part"
    return out


path = sys.argv[1]
with open(path, "rb") as f:
    found = records(f)
if all(r["flags"] == [0] for r in found):
    from sagemaker.amazon.common import read_recordio

    with open(path, "rb") as f:
        theirs = [r.hex() for r in read_recordio(f)]
    assert theirs == [r["hex"] for r in found], "the SDK's reader disagrees"
print()
print(json.dumps(found))
