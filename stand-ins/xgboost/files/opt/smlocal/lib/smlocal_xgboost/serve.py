"""The inference server: `GET /ping`, `POST /invocations` with `text/csv` (features only, no
label), `text/libsvm` or `application/x-recordio-protobuf` rows, answered with one
prediction per row (`text/csv`, the default: one line each; `application/json`:
`{"predictions": [{"score": ...}]}`), and `GET /execution-parameters` for batch transform.
Listens on SAGEMAKER_BIND_TO_PORT (8080)."""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import xgboost as xgb

from . import UserError, data, platform


class Model:
    def __init__(self, folder):
        path = os.path.join(folder, "xgboost-model")
        if not os.path.exists(path):
            candidates = [n for n in sorted(os.listdir(folder)) if not n.startswith(".")] if os.path.isdir(folder) else []
            if len(candidates) != 1:
                raise UserError(f"no xgboost-model in {folder} (found: {', '.join(candidates) or 'nothing'})")
            path = os.path.join(folder, candidates[0])
        self.booster = xgb.Booster()
        self.booster.load_model(path)
        self.lock = threading.Lock()

    def predict(self, body, content_type):
        kind = data.content_type(content_type or "text/csv")
        table = data.read_bytes("request", "the request body", body, kind, has_label=False)
        if table is None:
            raise UserError("the request body holds no rows")
        features = table.features
        expected = self.booster.num_features()
        if features.shape[1] != expected:
            if hasattr(features, "tocsr") and features.shape[1] < expected:
                features = data.widen(features, expected)
            else:
                raise UserError(
                    f"feature_names mismatch: the model takes {expected} features, the request has {features.shape[1]}")
        with self.lock:
            return self.booster.predict(xgb.DMatrix(features, missing=np.nan))


def answer(predictions, accept):
    accept = (accept or "text/csv").split(",")[0].split(";")[0].strip().lower()
    rows = predictions.tolist()
    if accept in ("application/json", "application/jsonlines"):
        scores = [{"score": r} for r in rows]
        if accept == "application/json":
            return "application/json", json.dumps({"predictions": scores}).encode()
        return accept, "".join(json.dumps(s) + "\n" for s in scores).encode()
    if accept in ("text/csv", "*/*"):
        lines = [",".join(str(v) for v in r) if isinstance(r, list) else str(r) for r in rows]
        return "text/csv", ("\n".join(lines) + "\n").encode()
    raise UserError(f"Accept {accept} is not supported; use text/csv, application/json or application/jsonlines")


def handler(model):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stdout.write("%s - %s\n" % (self.address_string(), fmt % args))

        def reply(self, status, content_type, body):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/ping":
                self.reply(200, "text/plain", b"")
            elif self.path == "/execution-parameters":
                body = {"MaxConcurrentTransforms": os.cpu_count() or 1, "BatchStrategy": "MULTI_RECORD",
                        "MaxPayloadInMB": 6}
                self.reply(200, "application/json", json.dumps(body).encode())
            else:
                self.reply(404, "text/plain", b"not found\n")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path != "/invocations":
                self.reply(404, "text/plain", b"not found\n")
                return
            try:
                predictions = model.predict(body, self.headers.get("Content-Type"))
                content_type, out = answer(predictions, self.headers.get("Accept"))
                self.reply(200, content_type, out)
            except UserError as e:
                status = 406 if str(e).startswith("Accept") else 415 if str(e).startswith("Content type") else 400
                self.reply(status, "text/plain", (str(e) + "\n").encode())
            except Exception as e:
                self.reply(500, "text/plain", f"{type(e).__name__}: {e}\n".encode())

    return Handler


def main():
    platform.banner("serving")
    try:
        model = Model(platform.MODEL)
    except (UserError, xgb.core.XGBoostError) as e:
        print(f"cannot load the model: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), handler(model))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"listening on port {port}", flush=True)
    server.serve_forever()
