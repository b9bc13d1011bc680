"""The embedded redis: a private ``redis-server`` child of ``kneenode serve``.

Started only when ``jobs.redis_url`` is unset. It listens on 127.0.0.1 (configured or free port),
keeps its data under ``data_dir/redis`` with AOF on (``jobs.redis_appendfsync``: ``always`` by
default, so every write redis has answered is on disk; ``everysec`` loses up to one second of
writes on power failure), and is stopped by PID on exit. Linux's parent-death
signal stops it too if ``serve`` itself is killed with SIGKILL. Its endpoint is written to
``data_dir/redis/endpoint.json`` so that CLI commands (``kneenode jobs`` ...) find it.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_json_atomic
from kneenode.logs import get_logger

log = get_logger(__name__)

ENDPOINT_FILE = "endpoint.json"
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask Linux to SIGTERM this child when its parent dies (serve killed with -9)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class RedisChild:
    """A running embedded redis-server; :meth:`stop` ends it by PID."""

    process: subprocess.Popen[bytes]
    port: int
    folder: Path

    @property
    def url(self) -> str:
        """Connection URL of this redis."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """PID of the redis-server process."""
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (redis writes its AOF and exits), then SIGKILL if it hangs; by PID only."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("redis did not stop in time; killing it", pid=self.pid)
                self.process.kill()
                self.process.wait(5)
        endpoint = self.folder / ENDPOINT_FILE
        if _read_endpoint(endpoint).get("pid") == self.pid:
            endpoint.unlink(missing_ok=True)
        log.info("embedded redis stopped", pid=self.pid)


def start_redis(
    folder: Path, *, port: int = 0, executable: str = "redis-server", timeout: float = 15.0,
    appendfsync: str = "always",
) -> RedisChild:
    """Start a private redis-server with AOF under ``folder`` and wait until it answers PING.

    Raises
    ------
    NodeError
        CONFIG_ERROR when redis-server is missing, when another embedded redis of this data
        folder is still running, or when the server does not come up.
    """
    binary = shutil.which(executable)
    if binary is None:
        raise NodeError(
            ErrorCode.CONFIG_ERROR,
            f"'{executable}' not found: the embedded broker needs the Debian package redis-server",
            hint="Install it (`make setup` or `apt-get install redis-server`), or set "
            "jobs.redis_url to an external redis.",
        )
    folder.mkdir(parents=True, exist_ok=True)
    running = running_endpoint(folder)
    if running is not None:
        raise NodeError(
            ErrorCode.CONFIG_ERROR,
            f"an embedded redis for {folder} is already running (pid {running['pid']}, "
            f"{running['url']}): is another `kneenode serve` using this data_dir?",
            hint="Stop the other node first, or give this one its own data_dir.",
        )
    port = port or free_port()
    args = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder.resolve()),
        "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
        "--daemonize", "no", "--protected-mode", "yes", "--logfile", "redis.log",
    ]
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509
    )
    child = RedisChild(process=proc, port=port, folder=folder)
    _wait_ready(child, timeout)
    write_json_atomic(folder / ENDPOINT_FILE, {"pid": proc.pid, "port": port, "url": child.url})
    log.info("embedded redis started", pid=proc.pid, port=port, folder=str(folder))
    return child


def _wait_ready(child: RedisChild, timeout: float) -> None:
    client = redis.Redis(host="127.0.0.1", port=child.port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                err = child.process.stderr.read().decode(errors="replace") if child.process.stderr else ""
                log_tail = (child.folder / "redis.log").read_text(errors="replace")[-800:] \
                    if (child.folder / "redis.log").exists() else ""
                raise NodeError(
                    ErrorCode.CONFIG_ERROR,
                    f"embedded redis-server exited at start (code {child.process.returncode}): "
                    f"{(err or log_tail).strip()[-500:]}",
                    hint="Check that the port is free and data_dir/redis is writable.",
                )
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        child.stop()
        raise NodeError(ErrorCode.CONFIG_ERROR, f"embedded redis did not answer in {timeout} s")
    finally:
        client.close()


def _read_endpoint(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def running_endpoint(folder: Path) -> dict[str, object] | None:
    """The endpoint of an embedded redis that is still alive for this folder, else None."""
    data = _read_endpoint(folder / ENDPOINT_FILE)
    pid, url = data.get("pid"), data.get("url")
    if not isinstance(pid, int) or not isinstance(url, str):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
        ok = bool(client.ping())
        client.close()
    except redis.RedisError:
        ok = False
    return data if ok else None
