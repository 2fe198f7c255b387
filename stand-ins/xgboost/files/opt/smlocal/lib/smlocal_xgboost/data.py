"""A channel's data as a matrix and its labels, for each content type the algorithm reads:
`text/csv` (label first, no header), `text/libsvm`, `application/x-parquet` (label first
column) and `application/x-recordio-protobuf` (SageMaker's protobuf records). A folder is
every file below it in name order (hidden files skipped); a Pipe mode channel is its
`<channel>_0` FIFO, read once."""

import io
import os

import numpy as np
import scipy.sparse

from . import UserError
from . import recordio

CSV = "text/csv"
LIBSVM = "text/libsvm"
PARQUET = "application/x-parquet"
RECORDIO = "application/x-recordio-protobuf"

# The spellings SageMaker's XGBoost accepts for each; a channel with no ContentType is libsvm.
ALIASES = {
    "csv": CSV, "text/csv": CSV,
    "libsvm": LIBSVM, "text/libsvm": LIBSVM, "text/x-libsvm": LIBSVM,
    "parquet": PARQUET, "application/x-parquet": PARQUET,
    "recordio-protobuf": RECORDIO, "application/x-recordio-protobuf": RECORDIO,
}


def content_type(raw):
    """The content type a channel's `ContentType` names, its parameters (`label_size=1`)
    dropped."""
    if not raw:
        return LIBSVM
    base = raw.split(";")[0].strip().lower()
    if base not in ALIASES:
        raise UserError(
            f"Content type {raw} is not supported; use one of text/csv, text/libsvm, "
            "application/x-parquet or application/x-recordio-protobuf")
    return ALIASES[base]


class Table:
    """Rows of features (dense or CSR), their labels and, for CSV with csv_weights, weights."""

    def __init__(self, features, labels, weights=None):
        self.features, self.labels, self.weights = features, labels, weights

    @property
    def rows(self):
        return self.features.shape[0]


def files_of(path):
    if os.path.isfile(path) or _is_fifo(path):
        return [path]
    out = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
    return out


def _is_fifo(path):
    import stat
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def read_channel(name, path, kind, csv_weights=False):
    """The channel's table, or None when it holds no data."""
    files = files_of(path)
    parts = [read_bytes(name, f, open(f, "rb").read(), kind, csv_weights) for f in files]
    parts = [p for p in parts if p is not None and p.rows > 0]
    if not parts:
        return None
    return concat(parts)


def read_bytes(channel, where, data, kind, csv_weights=False, has_label=True):
    if not data.strip():
        return None
    if kind == CSV:
        return _csv(channel, where, data, csv_weights, has_label)
    if kind == LIBSVM:
        return _libsvm(channel, where, data, has_label)
    if kind == PARQUET:
        return _parquet(channel, where, data, has_label)
    return _recordio(channel, where, data, has_label)


def _csv(channel, where, data, csv_weights, has_label):
    text = data.decode("utf-8", errors="replace")
    rows = []
    width = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            raise UserError(f"Blank line encountered in input data: {where} line {n}")
        cells = line.split(",")
        try:
            row = [float(c) if c.strip() != "" else np.nan for c in cells]
        except ValueError:
            raise UserError(
                f"Non-numeric value in CSV data: {where} line {n} ({line[:60]!r}); the algorithm takes "
                "numbers only, label first, no header")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise UserError(f"CSV rows of different widths in {where}: line {n} has {len(row)} columns, "
                            f"the first had {width}")
        rows.append(row)
    matrix = np.array(rows, dtype=np.float64)
    if not has_label:
        return Table(matrix, None)
    first = 2 if csv_weights else 1
    if matrix.shape[1] < first + 1:
        raise UserError(f"CSV data in {where} has no feature columns after the label")
    weights = matrix[:, 1] if csv_weights else None
    return Table(matrix[:, first:], matrix[:, 0], weights)


def _libsvm(channel, where, data, has_label):
    labels, indptr, indices, values = [], [0], [], []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        tokens = line.split("#")[0].split()
        if not tokens:
            continue
        if ":" not in tokens[0]:
            try:
                labels.append(float(tokens[0]))
            except ValueError:
                raise UserError(f"Bad label in libsvm data: {where} line {n}: {tokens[0]!r}")
            tokens = tokens[1:]
        elif has_label:
            raise UserError(f"Missing label in libsvm data: {where} line {n}")
        for token in tokens:
            index, _, value = token.partition(":")
            try:
                indices.append(int(index))
                values.append(float(value))
            except ValueError:
                raise UserError(f"Bad feature in libsvm data: {where} line {n}: {token!r} (expected index:value)")
        indptr.append(len(indices))
    width = (max(indices) + 1) if indices else 0
    matrix = scipy.sparse.csr_matrix((values, indices, indptr), shape=(len(indptr) - 1, width), dtype=np.float64)
    return Table(matrix, np.array(labels) if has_label else None)


def _parquet(channel, where, data, has_label):
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:
        raise UserError(f"Cannot read {where} as Parquet: {e}")
    matrix = np.column_stack([c.to_numpy(zero_copy_only=False).astype(np.float64) for c in table.columns])
    if not has_label:
        return Table(matrix, None)
    return Table(matrix[:, 1:], matrix[:, 0])


def _recordio(channel, where, data, has_label):
    try:
        features, labels = recordio.read_records(data)
    except ValueError as e:
        raise UserError(f"Cannot read {where} as RecordIO-protobuf: {e}")
    if has_label and labels is None:
        raise UserError(f"RecordIO-protobuf records in {where} have no label")
    return Table(features, labels)


def concat(parts):
    width = max(p.features.shape[1] for p in parts)
    if any(scipy.sparse.issparse(p.features) for p in parts):
        features = scipy.sparse.vstack([widen(p.features, width) for p in parts]).tocsr()
    else:
        features = np.vstack([p.features for p in parts]) if len(parts) > 1 else parts[0].features
        if any(p.features.shape[1] != width for p in parts):
            raise UserError("The channel's files have different numbers of columns")
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
    weights = None if parts[0].weights is None else np.concatenate([p.weights for p in parts])
    return Table(features, labels, weights)


def widen(matrix, width):
    """A sparse matrix with at least `width` columns (libsvm files need not name the last)."""
    matrix = scipy.sparse.csr_matrix(matrix)
    if matrix.shape[1] < width:
        matrix = scipy.sparse.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=(matrix.shape[0], width))
    return matrix
