"""A TCP forwarder in front of a real server, which a test can freeze or kill: another "server" address for the
session's one Triton, to see what the clients do when a server stops answering or dies.

    with TcpProxy("127.0.0.1:8001") as proxy:   # proxy.address is a new 127.0.0.1 port forwarding there
        proxy.freeze()     # bytes stop moving both ways, connections stay open (a SIGSTOPped server)
        proxy.thaw()
        proxy.kill()       # every connection reset, the port closed (a SIGKILLed server)
        proxy.retarget("127.0.0.1:8002")   # new connections go there, open ones stay (a load balancer's switch)
"""
from __future__ import annotations

import selectors
import socket
import struct
import threading
import time


class TcpProxy:
    def __init__(self, upstream: str, listen: str = "127.0.0.1"):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self._listener = socket.create_server((listen, 0))
        self._listener.setblocking(False)
        self.address = f"{listen}:{self._listener.getsockname()[1]}"
        self._running = threading.Event()
        self._running.set()
        self._frozen = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._thread = threading.Thread(target=self._loop, name=f"proxy-{self.address}", daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def retarget(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))

    def kill(self) -> None:
        """Resets every connection (RST, as the kernel does for a killed process) and closes the port."""
        self._running.clear()
        self._thread.join(5)

    def _loop(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        try:
            while self._running.is_set():
                if self._frozen.is_set():
                    time.sleep(0.05)
                    continue
                for key, _ in self._selector.select(0.05):
                    if key.fileobj is self._listener:
                        self._accept()
                    else:
                        self._forward(key.fileobj)
        finally:
            for sock in list(self._pairs) + [self._listener]:
                if sock is not self._listener:  # RST rather than FIN, like a process that died
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            self._selector.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        self._pairs[client], self._pairs[server] = server, client

    def _forward(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(1 << 16)
            if data:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
        except OSError:
            pass
        for end in (sock, peer):
            self._selector.unregister(end)
            self._pairs.pop(end, None)
            end.close()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
