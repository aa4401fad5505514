"""The servers the benchmarks talk to, each in a process of its own so it never shares a GIL with the client.

- FakeServerProcess: tests/fakeserver.py (through serve_fake.py) with a latency model; reports what
  it received, its CPU time and how late it answered.
- Nginx: a private nginx (own config, prefix, pid file and logs in a temp dir) answering every chat
  request with a fixed small JSON: a server whose cost is close to nothing, for the client ceiling.

Both are context managers and stop their processes on exit, whatever happened.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

CHAT_REPLY = {
    "id": "chatcmpl-nginx", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
}

NGINX_CONF = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    # One connection carries a whole run: no reconnects in the measurement.
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 '{reply}';
        }}
        location = /status {{ stub_status; }}
        location / {{ return 404; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its direct children, from /proc."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _stat_fields(int(entry.name))[1] == pid:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue  # the process ended while we looked
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        try:
            fields = _stat_fields(p)
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _stat_fields(pid: int) -> list:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...] with ppid as int."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    fields[1] = int(fields[1])
    return fields


def _stop(process: subprocess.Popen, first_signal: int) -> None:
    if process.poll() is None:
        process.send_signal(first_signal)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


class FakeServerProcess:
    """tests/fakeserver.py in a child process. `latency` is a spec for workloads.latency_model."""

    def __init__(self, latency: dict, *, max_concurrency: int | None = None, retry_after: str = "0",
                 embedding_dim: int = 8):
        self.command = [sys.executable, str(HERE / "serve_fake.py"), "--latency", json.dumps(latency),
                        "--retry-after", retry_after, "--embedding-dim", str(embedding_dim)]
        if max_concurrency is not None:
            self.command += ["--max-concurrency", str(max_concurrency)]
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def openai_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeServerProcess:
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=HERE)
        try:
            self.port = self._read_line(START_TIMEOUT_S)["port"]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        try:
            self.process.stdin.close()  # end of stdin: the server stops itself
            self.process.wait(STOP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            _stop(self.process, signal.SIGKILL)
        self.process.stdout.close()
        self.process = None

    def stats(self) -> dict:
        """What the server received since the last reset; `planned` maps row id -> latency used."""
        stats = self._command("stats")
        stats["planned"] = {int(k): v for k, v in stats["planned"].items()}
        return stats

    def reset(self) -> None:
        self._command("reset")

    def _command(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read_line(COMMAND_TIMEOUT_S)

    def _read_line(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"fake server did not answer within {timeout:g} s (exit code {self.process.poll()})")
        return json.loads(line)


class Nginx:
    """A private nginx answering POST /v1/chat/completions with CHAT_REPLY; /status is its stub_status."""

    def __init__(self, workers: int = 1):
        self.workers = workers
        self.port = 0
        self.prefix: str | None = None
        self.process: subprocess.Popen | None = None
        self._status_requests = 0

    @property
    def openai_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise RuntimeError("nginx is not installed: apt-get install -y nginx-light")
        self.prefix = tempfile.mkdtemp(prefix="aiquery-bench-nginx-")
        self.port = free_port()
        conf = Path(self.prefix, "nginx.conf")
        conf.write_text(NGINX_CONF.format(workers=self.workers, prefix=self.prefix, port=self.port,
                                          reply=json.dumps(CHAT_REPLY, separators=(",", ":"))))
        # -e: nginx writes to its compiled-in error log before reading the config; keep even that private.
        self.process = subprocess.Popen([binary, "-p", self.prefix, "-e", f"{self.prefix}/error.log",
                                         "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.process.stderr.read().decode(errors='replace')}")
            try:
                self.requests_served()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start within {START_TIMEOUT_S:g} s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGQUIT)  # graceful: workers finish and the master removes its pid file
            self.process.stderr.close()
            self.process = None
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def requests_served(self) -> int:
        """Requests nginx has served, from stub_status, not counting the status requests themselves."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        self._status_requests += 1
        return int(lines[2].split()[2]) - self._status_requests  # line 3: "accepts handled requests" counts

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)
