"""Running the API on a real ASGI server (uvicorn): in the foreground for `goushi serve`, or in a background
thread for tests, benchmarks and notebooks."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from goushi.errors import GoushiError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _config(app: FastAPI, host: str, port: int, quiet: bool) -> uvicorn.Config:
    if not 1 <= int(port) <= 65535:
        raise GoushiError(f"--port {port}: must be between 1 and 65535")
    return uvicorn.Config(app, host=host, port=int(port), log_level="warning" if quiet else "info",
                          access_log=not quiet, timeout_graceful_shutdown=5)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve_forever(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until Ctrl-C."""
    if port and not _port_free(host, port):
        raise GoushiError(f"--port {port}: cannot serve on {host}:{port}, another program is using it; pick another "
                          "with --port")
    uvicorn.Server(_config(app, host, port, quiet=False)).run()


@dataclass
class Background:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0) -> Background:
    """Start serving in a daemon thread and wait until it accepts connections; port 0 picks a free one."""
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(_config(app, host, port, quiet=True))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - not the main thread
    thread = threading.Thread(target=server.run, name="goushi-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise GoushiError(f"the API server did not start on {host}:{port}")
        time.sleep(0.02)
    return Background(url=f"http://{host}:{port}", server=server, thread=thread)


__all__ = ["serve_forever", "start_background", "Background", "LOCAL_HOSTS"]
