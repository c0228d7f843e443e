"""A unix-socket forwarder to the real Docker engine that a test can cut and restore.

The backend under test gets `DOCKER_HOST=unix://<proxy path>`; `cut()` does to it what a `dockerd`
restart does (the socket file disappears, every open connection breaks: requests, event and log
streams), without touching the engine the other tests share. `restore()` listens again.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
from pathlib import Path

ENGINE_SOCKET = "/var/run/docker.sock"


class EngineProxy:
    def __init__(self, path: Path, target: str = ENGINE_SOCKET) -> None:
        self.path = str(path)
        self.target = target
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        """Listen (again) on `path`."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        with self._lock:
            self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True, name="engine-proxy")
        thread.start()
        self._threads.append(thread)

    restore = start

    def cut(self) -> None:
        """The engine goes away: no socket file, every connection closed."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._open = set(self._open), set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True, name="engine-relay").start()

    def _relay(self, one: socket.socket, other: socket.socket) -> None:
        peer = {one: other, other: one}
        with selectors.DefaultSelector() as selector:
            selector.register(one, selectors.EVENT_READ)
            selector.register(other, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select():
                        source = key.fileobj
                        assert isinstance(source, socket.socket)
                        data = source.recv(65536)
                        if not data:
                            return
                        peer[source].sendall(data)
            except (OSError, ValueError):  # cut: the sockets were closed under us
                return
            finally:
                with self._lock:
                    self._open -= {one, other}
                for connection in (one, other):
                    with contextlib.suppress(OSError):
                        connection.close()
