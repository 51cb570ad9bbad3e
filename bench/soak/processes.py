"""The processes the soak starts and may kill -9, freeze (SIGSTOP) and restart: any child, and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.net import free_port


@dataclass
class Proc:
    """A child process the soak may kill, freeze and restart; its output goes to ``log``."""

    name: str
    kind: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    ready_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    wanted: bool = False  # should be running (an exit not caused by a fault is a crash)
    frozen: bool = False
    restarts: int = 0
    peak_rss_mib: float = 0.0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.wanted, self.frozen = True, False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: signal.Signals) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill9(self) -> None:
        self.wanted = False
        self.send(signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.frozen = False

    def stop(self) -> None:
        self.wanted = False
        if not self.running():
            return
        self.send(signal.SIGCONT)
        self.send(signal.SIGTERM)
        assert self.process is not None
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill9()

    def rss_mib(self) -> float:
        if not self.running():
            return 0.0
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                    self.peak_rss_mib = max(self.peak_rss_mib, rss)
                    return rss
        except OSError:
            pass
        return 0.0


def children_of(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            out.append(int(entry.name))
    return out


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's initdb and pg_ctl (on PATH, or Debian's newest), None without them."""
    found = shutil.which("initdb")
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin")) if Path("/usr/lib/postgresql").exists() else []
    where = Path(found).parent if found else (candidates[-1] if candidates else None)
    return where if where is not None and (where / "pg_ctl").exists() else None


class Postgres:
    """A throwaway PostgreSQL cluster: initdb under ``folder``, served on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.data, self.sockets = folder / "data", folder / "sock"
        where = postgres_bin()
        if where is None:
            raise SystemExit("error: initdb/pg_ctl not found: apt-get install postgresql (the soak runs its own)")
        self.bin: Path = where
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        self.frozen: list[int] = []

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.as_user, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                       timeout=60)

    def init(self) -> None:
        self.folder.mkdir(parents=True)
        self.sockets.mkdir()
        if self.as_user:
            shutil.chown(self.folder, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-t", "60",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off -c max_connections=200",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self.thaw()
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def postmaster(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def freeze(self) -> None:
        main = self.postmaster()
        if main is None:
            return
        self.frozen = [main, *children_of(main)]
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
