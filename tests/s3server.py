"""A real S3 server on loopback for tests and benchmarks: moto's, behind a small WSGI wrapper.

The wrapper is the server side of the measurements: it adds a fixed latency to every request
(as a remote bucket would), can answer the next N GETs with a 503 (a transient fault), and
counts requests and response-body bytes per method, so a test compares what the client says it
transferred with what the server sent.

    with S3Server(latency_s=0.02) as s3:
        s3.upload_tree(local_dir, "bucket", "prefix")
        ...  # clients find it through s3.env (AWS_ENDPOINT_URL + dummy keys): the standard chain

Use `s3_env` (a pytest fixture factory below) to set that environment for one test.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app
from werkzeug.serving import make_server


class _Wrapper:
    def __init__(self, app, server: S3Server):
        self.app, self.server = app, server

    def __call__(self, environ, start_response):
        s = self.server
        method = environ["REQUEST_METHOD"]
        if s.latency_s:
            time.sleep(s.latency_s)
        with s.lock:
            s.requests[method] += 1
            fail = method == "GET" and s._fail_next > 0 and not environ.get("QUERY_STRING")
            if fail:
                s._fail_next -= 1
        if fail:
            start_response("503 Service Unavailable", [("Content-Type", "application/xml")])
            return [b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"]
        body = self.app(environ, start_response)
        out = b"".join(body)
        if hasattr(body, "close"):
            body.close()
        with s.lock:
            s.body_bytes[method] += len(out)
        return [out]


class S3Server(ThreadedMotoServer):
    """moto's threaded server on 127.0.0.1 (a free port), with latency, faults and counters."""

    def __init__(self, latency_s: float = 0.0):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.body_bytes: Counter[str] = Counter()
        self._fail_next = 0

    def _server_entry(self) -> None:  # moto's, with the app wrapped
        app = _Wrapper(DomainDispatcherApplication(create_backend_app), self)
        self._server = make_server(self._ip_address, self._port, app, True)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs, all through the standard AWS environment chain."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def fail_next_gets(self, n: int) -> None:
        with self.lock:
            self._fail_next = n

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.body_bytes.clear()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def upload_tree(self, local: str | os.PathLike, bucket: str, prefix: str = "") -> list[str]:
        """Create `bucket` (if needed) and upload every file under `local`; return the keys."""
        c = self.client()
        if bucket not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
            c.create_bucket(Bucket=bucket)
        keys = []
        for p in sorted(Path(local).rglob("*")):
            if p.is_file():
                key = "/".join(filter(None, [prefix, p.relative_to(local).as_posix()]))
                c.upload_file(str(p), bucket, key)
                keys.append(key)
        return keys

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def use_s3(monkeypatch, server: S3Server) -> None:
    """Point every S3 client of this test at `server` through the environment, fresh instances."""
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    try:
        import s3fs
    except ImportError:
        return
    # fsspec caches filesystem instances by arguments; one made for another server must not leak.
    s3fs.S3FileSystem.clear_instance_cache()
