"""A TCP proxy on 127.0.0.1 in front of a server (the S3 server), for tests that need a request to
go wrong at an exact point: subclasses decide what happens when a client sends bytes holding a
`trigger` (drop every connection, hold that request forever, ...) and whether a new connection is
let in."""

from __future__ import annotations

import contextlib
import socket
import threading


class TriggerProxy:
    """127.0.0.1:port -> `upstream`, byte for byte, until a client chunk contains `trigger`:
    then `on_trigger()` decides; True ends that connection (nothing of the chunk is forwarded)."""

    def __init__(self, upstream: tuple[str, int], trigger: bytes) -> None:
        self.upstream = upstream
        self.trigger = trigger
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()
        self.drop_all()

    def drop_all(self) -> None:
        with self._lock:
            socks, self._open = list(self._open), set()
        for s in socks:
            close_socket(s)

    # --- what subclasses change -------------------------------------------------------------
    def admit(self) -> bool:
        """Whether a new connection is forwarded (called under the lock); False drops it."""
        return True

    def on_trigger(self) -> bool:
        """A client sent `trigger`; True: forward nothing more on this connection and close it."""
        return False

    # --- the plumbing -----------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self.admit():
                    close_socket(client)
                    continue
                upstream = socket.create_connection(self.upstream)
                self._open |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while chunk := src.recv(1 << 16):
                if from_client and self.trigger in chunk and self.on_trigger():
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        close_socket(src)
        close_socket(dst)


def close_socket(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
