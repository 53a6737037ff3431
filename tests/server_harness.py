"""Running the server in tests: in a thread (uvicorn on a free loopback port) or as a
`qwen3-gguf serve` process; both bounded in time and always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1 (a port of its own) in a background thread."""

    def __init__(self, app):
        import uvicorn

        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.__exit__()
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._socket.close()


class ServeProcess:
    """`qwen3-gguf serve ARGS --port <free>` in a child process (in `cwd`, the repository by default), stopped
    with SIGTERM (then killed).

    `prelude` is Python run in the child before the CLI (a test's hook)."""

    def __init__(self, *args: str, env: dict | None = None, prelude: str = "", cwd: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cli = [sys.executable, "-c", f"{prelude}\nfrom qwen3_gguf.cli import cli; cli()"]
        self.command = [*cli, "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd or Path(__file__).resolve().parent.parent
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.process.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("serve did not become healthy in time")
            time.sleep(0.1)

    def terminate(self, timeout: float = 60) -> tuple[int, str, str]:
        """SIGTERM, then the exit code and what it printed."""
        self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        return self.process.returncode, out, err

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate(timeout=30)
