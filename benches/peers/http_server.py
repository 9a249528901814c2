#!/usr/bin/env python3
"""Dev-only peer: the minimal Python HTTP classifier a user would write around ONNX Runtime.

POST /classify {"text": "..."} -> {"label": "...", "score": ...}; the server-side times go in
response headers (x-tokenize-us, x-inference-us, x-total-us) for http_openloop.py to report.

  --framework fastapi  FastAPI + uvicorn (one process; a sync endpoint, so requests run on
                       FastAPI's thread pool; uvloop + httptools when installed; access log off)
  --framework stdlib   http.server.ThreadingHTTPServer, HTTP/1.1 keep-alive, a thread per
                       connection
  --trivial            answer a fixed result without tokenizing or inferring (to check that the
                       load driver is not the bottleneck)

The model: benches/peers/out/sentiment-minilm.onnx (benches/peers/export_onnx.py), session with
ORT_ENABLE_ALL, intra_op --threads (2), inter_op 1; the `tokenizers` library on tokenizer.json.
Usage: http_server.py [--framework fastapi|stdlib] [--port 8000] [--threads 2] [--trivial]
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import ROOT, load_tokenizer, ort_classify, ort_session  # noqa: E402


def make_classifier(args):
    if args.trivial:
        def trivial(text):
            return {"label": "POSITIVE", "score": 0.99}, 0, 0
        return trivial
    run = ort_classify(load_tokenizer(), ort_session(args.onnx, args.threads))

    def classify(text):
        label, score, tokenize_s, infer_s = run(text)
        return {"label": label, "score": score}, int(tokenize_s * 1e6), int(infer_s * 1e6)
    classify("warm up")
    return classify


def serve_fastapi(args, classify):
    import uvicorn
    from fastapi import FastAPI, Response
    from pydantic import BaseModel

    class Item(BaseModel):
        text: str

    app = FastAPI()

    @app.post("/classify")
    def post(item: Item, response: Response):
        t0 = time.perf_counter()
        result, tok_us, inf_us = classify(item.text)
        response.headers["x-tokenize-us"] = str(tok_us)
        response.headers["x-inference-us"] = str(inf_us)
        response.headers["x-total-us"] = str(int((time.perf_counter() - t0) * 1e6))
        return result

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def serve_stdlib(args, classify):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_POST(self):
            t0 = time.perf_counter()
            if self.path != "/classify":
                return self.send_error(404)
            try:
                n = int(self.headers.get("Content-Length", "0"))
                text = json.loads(self.rfile.read(n))["text"]
                if not isinstance(text, str):
                    raise ValueError("text must be a string")
            except (ValueError, KeyError, TypeError) as e:
                return self.send_error(400, str(e))
            result, tok_us, inf_us = classify(text)
            body = json.dumps(result).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-tokenize-us", str(tok_us))
            self.send_header("x-inference-us", str(inf_us))
            self.send_header("x-total-us", str(int((time.perf_counter() - t0) * 1e6)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 1024
    with ThreadingHTTPServer((args.host, args.port), Handler) as server:
        server.serve_forever()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=["fastapi", "stdlib"], default="fastapi")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx", type=Path, default=ROOT / "benches/peers/out/sentiment-minilm.onnx")
    ap.add_argument("--trivial", action="store_true")
    args = ap.parse_args()
    classify = make_classifier(args)
    print(f"serving {args.framework}{' (trivial)' if args.trivial else ''} on "
          f"http://{args.host}:{args.port}/classify", file=sys.stderr, flush=True)
    (serve_fastapi if args.framework == "fastapi" else serve_stdlib)(args, classify)


if __name__ == "__main__":
    main()
