"""A stand-in for IIS + ARR 3 in front of a WebSocket server, as their users report it behaves
(nothing Windows runs here): the upgrade is forwarded with the browser's Sec-WebSocket-Extensions
offer, and the connection is closed when the first frame arrives after the server agreed to
permessage-deflate. ARR forwards through websocket.dll, which supports no extension
(dotnet/aspnetcore#58846); a packet capture of IIS 10 + ARR 3 + uvicorn shows IIS closing the
client's connection right after the backend's first payload (open-webui/open-webui#24579);
python-websockets/websockets#1192: "ARR3.0 doesn't support WebSocket compression".

With `strip_extensions=True` it applies the rule `dagpg render iis` writes: the request's
Sec-WebSocket-Extensions header is removed (server variable HTTP_SEC_WEBSOCKET_EXTENSIONS set to
an empty value), so the server never compresses and the frames pass.
"""

from __future__ import annotations

import re
import socket
import threading


class FakeArr:
    def __init__(self, backend_port: int, *, strip_extensions: bool):
        self.backend_port = backend_port
        self.strip_extensions = strip_extensions
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.backend_port), timeout=30)
        try:
            head, rest = _read_head(client)
            upgrade = re.search(rb"^upgrade:\s*websocket", head, re.I | re.M) is not None
            if upgrade and self.strip_extensions:
                head = re.sub(rb"\r\nsec-websocket-extensions:[^\r]*", b"", head, flags=re.I)
            upstream.sendall(head + b"\r\n\r\n" + rest)
            if not upgrade:
                _pipe(client, upstream)
                return
            answer, after = _read_head(upstream)
            client.sendall(answer + b"\r\n\r\n")
            compressed = re.search(rb"^sec-websocket-extensions:\s*permessage-deflate", answer,
                                   re.I | re.M) is not None
            if compressed:
                # websocket.dll cannot handle the extension: the server's first frame (here the
                # answer to the client's first message) ends the connection.
                if not after:
                    upstream.sendall(client.recv(65536))
                    upstream.recv(65536)
                return
            if after:
                client.sendall(after)
            _pipe(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                sock.close()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed during the head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _pipe(a: socket.socket, b: socket.socket) -> None:
    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join(30)
