"""A tiny Docker registry (HTTP API v2, read-only) on loopback, so tests can make the real engine pull.

No registry is reachable from the test machines, but dockerd treats registries on 127.0.0.0/8 as
insecure-allowed, so `docker pull 127.0.0.1:<port>/demo/web:1` works against this server. It serves
just what a pull reads: `GET /v2/`, `GET|HEAD /v2/<name>/manifests/<tag or digest>` (a schema2 manifest)
and `GET|HEAD /v2/<name>/blobs/<digest>` (the config and the gzipped layers), blobs optionally throttled
so a pull takes long enough for its progress to be watched.

Images are made from one the engine has (`docker save`): its layers, plus a layer of random bytes and a
label in the config unique to each `publish`, so every published image is new to the engine (it would
skip the pull of an image whose config it has, and the download of a blob digest it has seen). Every
layer is gzipped with a fresh header for the same reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import secrets
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CHUNK = 16 * 1024


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class SavedImage:
    """An image as `docker save` gives it: its config (parsed) and its uncompressed layer tars."""

    config: dict[str, Any]
    layers: list[bytes]

    @classmethod
    def from_engine(cls, client: docker.DockerClient, reference: str) -> SavedImage:
        archive = b"".join(client.images.get(reference).save(named=True))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:

            def read(path: str) -> bytes:
                member = tar.extractfile(path)
                assert member is not None, path
                return member.read()

            (entry,) = json.loads(read("manifest.json"))
            return cls(json.loads(read(entry["Config"])), [read(path) for path in entry["Layers"]])


def _padding_layer(size: int) -> bytes:
    """A layer tar holding one file of random (incompressible) bytes: the pull's bulk."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("hs-pull-padding.bin")
        info.size, info.mode, info.mtime = size, 0o644, 0
        tar.addfile(info, io.BytesIO(secrets.token_bytes(size)))
    return buffer.getvalue()


def _gzipped(data: bytes) -> bytes:
    # A random mtime in the gzip header: the same layer gets a blob digest the engine has never seen.
    return gzip.compress(data, compresslevel=1, mtime=secrets.randbelow(2**31))


@dataclass
class Registry:
    """The registry's content and its HTTP server (`start`, `stop`); `host` is 127.0.0.1:<port>."""

    throttle: float | None = None  # bytes per second and blob download; None: as fast as it goes
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (name, tag or digest) -> body
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)  # "GET /v2/..." as they came
    published: list[str] = field(default_factory=list)  # the references `publish` answered
    _server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self._server is not None, "start() first"
        return f"127.0.0.1:{self._server.server_address[1]}"

    def publish(self, name: str, tag: str, image: SavedImage, padding: int = 0) -> str:
        """Serve `image` as name:tag, made unique (a label, and `padding` random bytes as one more
        layer); answer the reference to pull."""
        config = json.loads(json.dumps(image.config))
        layers = list(image.layers)
        if padding:
            layers.append(_padding_layer(padding))
            config["rootfs"]["diff_ids"].append(_digest(layers[-1]))
            config.setdefault("history", []).append({"created_by": "hyperservice test registry: padding"})
        labels = config.setdefault("config", {}).get("Labels") or {}
        config["config"]["Labels"] = {**labels, "io.hyperservice.test.registry": secrets.token_hex(8)}
        config_blob = json.dumps(config).encode()
        self.blobs[_digest(config_blob)] = config_blob
        descriptors = []
        for layer in layers:
            blob = _gzipped(layer)
            self.blobs[_digest(blob)] = blob
            descriptors.append({"mediaType": LAYER_TYPE, "size": len(blob), "digest": _digest(blob)})
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": len(config_blob), "digest": _digest(config_blob)},
            "layers": descriptors,
        }).encode()
        self.manifests[(name, tag)] = manifest
        self.manifests[(name, _digest(manifest))] = manifest
        self.published.append(f"{self.host}/{name}:{tag}")
        return self.published[-1]

    def layer_bytes(self, reference: str) -> int:
        """What pulling `reference` downloads in layers (their compressed sizes, as the manifest says)."""
        name, tag = reference.removeprefix(f"{self.host}/").rsplit(":", 1)
        return sum(layer["size"] for layer in json.loads(self.manifests[(name, tag)])["layers"])

    def start(self) -> Registry:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the requests are recorded
                pass

            def do_HEAD(self) -> None:
                self._answer(send_body=False)

            def do_GET(self) -> None:
                self._answer(send_body=True)

            def _answer(self, send_body: bool) -> None:
                registry.requests.append(f"{self.command} {self.path}")
                path = self.path.split("?")[0]
                if path in ("/v2", "/v2/"):
                    return self._send(200, b"{}", "application/json", send_body)
                found = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
                if found is None:
                    return self._error(404, "NAME_UNKNOWN", "no such route", send_body)
                name, kind, key = found.groups()
                if kind == "manifests":
                    body = registry.manifests.get((name, key))
                    if body is None:
                        return self._error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {name}:{key}", send_body)
                    return self._send(200, body, MANIFEST_TYPE, send_body, digest=_digest(body))
                blob = registry.blobs.get(key)
                if blob is None:
                    return self._error(404, "BLOB_UNKNOWN", f"blob unknown: {key}", send_body)
                return self._send(200, blob, "application/octet-stream", send_body, digest=key, throttled=True)

            def _error(self, status: int, code: str, message: str, send_body: bool) -> None:
                body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
                self._send(status, body, "application/json", send_body)

            def _send(self, status: int, body: bytes, content_type: str, send_body: bool, digest: str = "",
                      throttled: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if not send_body:
                    return
                rate = registry.throttle if throttled else None
                started = time.monotonic()
                try:
                    for offset in range(0, len(body), CHUNK):
                        self.wfile.write(body[offset:offset + CHUNK])
                        if rate:  # keep to `rate` bytes per second from the start of this blob
                            ahead = (offset + CHUNK) / rate - (time.monotonic() - started)
                            if ahead > 0:
                                time.sleep(ahead)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the engine gave up on this download (a cancelled pull)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="test-registry", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


if __name__ == "__main__":  # by hand: serve demo/web:1 until interrupted, e.g. to try `docker pull`
    import sys

    client = docker.from_env()
    registry = Registry(throttle=float(sys.argv[1]) if len(sys.argv) > 1 else None).start()
    print(registry.publish("demo/web", "1", SavedImage.from_engine(client, "hyperservice-test/web:1"), 3 * 2**20),
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        registry.stop()
