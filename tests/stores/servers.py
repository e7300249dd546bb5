"""Throwaway PostgreSQL clusters and Redis servers on free ports, which the
fault tests stop and restart for real. The shared servers (5432/6379) are
never touched."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from .helpers import free_port, in_ci


def _unavailable(what: str) -> None:
    if in_ci():
        pytest.fail(f"{what}; CI is set, so fault tests fail instead of skipping", pytrace=False)
    pytest.skip(what)


class TempPostgres:
    """initdb + pg_ctl in a temp dir; run as the postgres user when we are root."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None:
            _unavailable("initdb not found (install postgresql server binaries)")
        assert initdb is not None
        self.bin = os.path.dirname(initdb)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="lhp-pg-")
        self.data = os.path.join(self.dir, "data")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._as, os.path.join(self.bin, tool), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=40"
        )
        log = os.path.join(self.dir, "log")
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", log, "-w", "-t", "60", "start")

    def crash(self) -> None:
        """Stop like a crash: no shutdown checkpoint, clients see resets."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


class TempRedis:
    """A redis-server subprocess with an append-only file, so a restart after
    SIGKILL comes back with every acknowledged write."""

    def __init__(self) -> None:
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            _unavailable("redis-server not found")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="lhp-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.exe is not None
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.dir,
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self._ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not become ready")
            time.sleep(0.02)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def crash(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def destroy(self) -> None:
        self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)
