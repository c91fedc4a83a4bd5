"""Run the draft endpoint's ASGI app under uvicorn in a background thread of a tenant's service."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from fedloop.shared.files import require_private_setting


@dataclass
class HttpServer:
    """A running uvicorn server and the port it bound."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        """Stop accepting, finish requests in flight, and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_http(
    app: FastAPI, address: str, tls_certificate: str = "", tls_key: str = "", startup_timeout_s: float = 30.0
) -> HttpServer:
    """Serve `app` on host:port (port 0 picks a free one), over HTTPS with a certificate and its key (the key file
    must be 0600); OSError naming the setting if it cannot."""
    host, _, port = address.rpartition(":")
    if tls_key:
        require_private_setting(Path(tls_key), "serve.tls_key")
    config = uvicorn.Config(
        app,
        host=host.strip("[]"),
        port=int(port),
        log_level="warning",
        access_log=False,
        lifespan="off",
        ssl_certfile=tls_certificate or None,
        ssl_keyfile=tls_key or None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fedloop-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise OSError(
                f"cannot serve the draft endpoint on {address}: is the port in use? set serve.address "
                "in the tenant config"
            )
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return HttpServer(server, thread, bound)
