"""A fault injector (a test stand-in, not a Switchyard part): a TCP proxy in front of one real server.

The test stack points the recsys worker at this proxy instead of Feast's Redis, so a test can cut
the connection (``cut()``: live connections are closed, new ones accepted and closed at once) and
restore it (``restore()``), and check that the cut took hold (``refused`` / ``closed`` count the
connections it turned away or broke).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, options: list[str] | None = None) -> None:
        self.target = (target_host, target_port)
        self.options = options or []  # Feast's ",db=N" style options, passed through in ``feast_address``
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._live: set[tuple[socket.socket, socket.socket]] = set()  # (client, upstream)
        self._cut = False
        self.refused = 0  # connections accepted and closed at once while cut
        self.closed = 0  # live connections broken by cut()
        self._stopped = False

    @classmethod
    def for_feast(cls, feast_redis: str) -> FaultProxy:
        """In front of the Redis of a Feast connection string ("host:port[,db=N][,password=...]")."""
        host_port, *options = feast_redis.split(",")
        host, port = host_port.rsplit(":", 1)
        return cls(host, int(port), options)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def feast_address(self) -> str:
        """The proxy as a Feast Redis connection string, with the target's options."""
        return ",".join([self.address, *self.options])

    @property
    def db(self) -> int:
        return int(dict(o.split("=", 1) for o in self.options).get("db", 0))

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        self.cut()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            live, self._live = self._live, set()
            self.closed += len(live)
        for pair in live:
            for s in pair:
                _close(s)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
                if cut:
                    self.refused += 1
            if cut:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                cut = self._cut  # cut while this one was connecting
                if cut:
                    self.refused += 1
                else:
                    self._live.add(pair)
            if cut:
                _close(client)
                _close(upstream)
                continue
            for a, b in (pair, (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, pair), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._live.discard(pair)
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
