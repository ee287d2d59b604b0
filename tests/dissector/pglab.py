"""A private PostgreSQL server in the server namespace of a ``NetLab``, and its clients.

The cluster lives in a fresh directory owned by the ``postgres`` user (the server refuses to
run as root), listens on the lab's server address only, and asks for a SCRAM password.
Clients (psql, pgbench) run in the client namespace over TCP, so every byte they exchange
crosses the veth pair that tcpdump watches. Everything is stopped by pid and removed on exit.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .netlab import NetLab

PASSWORD = "s3cret"
USER = "app"


def pg_bindir() -> Path:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not found:
        raise RuntimeError("PostgreSQL server not installed (make setup installs postgresql)")
    return found[-1].parent


class PgServer:
    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.bindir = pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="rawcap-pg-"))
        self.env = {**os.environ, "PGPASSWORD": PASSWORD, "PGHOST": lab.server_ip,
                    "PGUSER": USER, "PGDATABASE": "postgres", "PGCONNECT_TIMEOUT": "10"}

    def __enter__(self) -> PgServer:
        pw = pwd.getpwnam("postgres")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        db = self.dir / "db"
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / "initdb"), "-D",
                        str(db), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
                        "-E", "UTF8", "--locale=C", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        with (db / "pg_hba.conf").open("a") as f:
            f.write(f"host all all {self.lab.client_ip}/32 scram-sha-256\n")
        self.lab.start(self.lab.ns_s, "runuser", "-u", "postgres", "--",
                       str(self.bindir / "postgres"), "-D", str(db),
                       "-c", f"listen_addresses={self.lab.server_ip}",
                       "-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off",
                       "-c", "shared_buffers=16MB", "-c", "max_connections=20")
        deadline = time.monotonic() + 60
        while subprocess.run(["ip", "netns", "exec", self.lab.ns_c, str(self.bindir / "pg_isready"),
                              "-q", "-h", self.lab.server_ip], env=self.env).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.2)
        return self

    def client(self, *cmd: str, stdin: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run psql/pgbench (of the server's version) in the client namespace; ``check=False``
        for expected failures."""
        r = subprocess.run(["ip", "netns", "exec", self.lab.ns_c, str(self.bindir / cmd[0]),
                            *cmd[1:]], env=self.env,
                           input=stdin if stdin is not None else "", capture_output=True,
                           text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def psql(self, sql: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.client("psql", "-X", "-v", "ON_ERROR_STOP=0", "-c", sql, stdin=stdin,
                           check=check)

    def __exit__(self, *exc: object) -> None:
        # the lab stops the server (SIGTERM to runuser, passed on: a fast shutdown)
        for p in self.lab.procs:
            NetLab.stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)
