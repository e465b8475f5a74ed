"""Running the annotator: which addresses it may bind, and uvicorn on a socket bound here (so that
``--port 0`` prints the port the system chose)."""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Callable

import uvicorn
from fastapi import FastAPI

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty host name or IP address, got {host!r}")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> str | None:
    """None for a loopback host; a warning to print for another host when ``allow_remote``; else
    ``ValueError`` saying to pass ``--allow-remote``."""
    if not isinstance(allow_remote, bool):
        raise TypeError(f"allow_remote must be a bool, got {type(allow_remote).__name__}")
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ValueError(f"--host {host} is not a loopback address: anyone who can reach it could read your images "
                         "and change your labels (the annotator has no login). Pass --allow-remote to bind it anyway.")
    return (f"WARNING: serving on {host}, not a loopback address, with --allow-remote: anyone who can reach this "
            "machine can read the images and change the labels (there is no login).")


def allowed_hosts(host: str) -> list[str] | None:
    """Host headers to accept: the loopback names when bound to loopback (against DNS rebinding), else any."""
    if is_loopback(host) and ":" not in host:
        return sorted({"127.0.0.1", "localhost", host})
    return None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); try another --port") from e
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class ServerThread:
    """The app served by uvicorn on a background thread (tests, benchmarks): ``start()`` returns the URL."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        if not isinstance(app, FastAPI):
            raise TypeError(f"app must be a FastAPI app (see create_app), got {type(app).__name__}")
        check_host(host, allow_remote=False)
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        ready = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self.server.started:
                ready.set()
                break
            ready.wait(0.02)
        if not ready.is_set():
            raise RuntimeError(f"the annotator server did not start within {timeout} s")
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def serve(app: FastAPI, host: str, port: int, allow_remote: bool = False,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` until interrupted. Refuses a non-loopback ``host`` without ``allow_remote`` (see
    ``check_host``); ``on_ready(url)`` is called once listening (default: print the URL)."""
    if not isinstance(app, FastAPI):
        raise TypeError(f"app must be a FastAPI app (see create_app), got {type(app).__name__}")
    warning = check_host(host, allow_remote)
    if warning:
        print(warning, flush=True)
    sock = bind(host, port)
    url = url_of(sock)
    (on_ready or (lambda u: print(f"samforge annotate: open {u} in a browser (Ctrl+C to stop)", flush=True)))(url)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()
