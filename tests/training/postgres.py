"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries (installed by ``scripts/setup.sh``), a
fresh cluster in a temporary folder, listening on a free loopback port only, password authentication, and no
trace left once :meth:`Server.close` has run.

initdb and the server refuse to run as root, so as root they run as the ``postgres`` system user the package makes
(``runuser``); as anyone else, as that user. Nothing here skips: a server that cannot be made is an error that
names what is missing.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from glob import glob
from pathlib import Path

#: The role the tests' studies connect as (a password-protected login role, as a shared study would use).
ROLE = "tuner"


def binaries() -> Path:
    """The folder of initdb and pg_ctl: the newest /usr/lib/postgresql/*/bin (Debian's layout), else PATH's."""
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH): run "
            "scripts/setup.sh as root, which installs Debian's postgresql package"
        )
    return Path(initdb).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One PostgreSQL cluster, started: ``url(database)`` of the :data:`ROLE` role, ``database(name)`` makes one;
    ``stop(mode)`` and ``start()`` for tests of a server that goes away; ``close()`` stops it and removes it all."""

    def __init__(self) -> None:
        self.bin = binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="primaldual-postgres-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self._superuser_password = secrets.token_hex(12)
        try:
            self._init()
            self.start()
            self._sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD %s", self.password)
        except BaseException:
            self.close()
            raise

    def _owner(self, *command: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` as the cluster's owner (``postgres`` when this process is root), in its folder."""
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*prefix, *map(str, command)], cwd=self.folder, capture_output=True, text=True, timeout=120
        )
        if check and done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(map(str, command))} failed ({done.returncode}): {done.stderr}{log}")
        return done

    def _init(self) -> None:
        secret = self.folder / "superuser-password"
        secret.write_text(self._superuser_password)
        if os.geteuid() == 0:
            for path in (self.folder, secret):
                shutil.chown(path, "postgres", "postgres")
        secret.chmod(0o600)
        self._owner(
            self.bin / "initdb", "-D", self.data, "-U", "postgres", f"--pwfile={secret}", "--auth=scram-sha-256",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        secret.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",  # TCP on loopback only: no socket file anywhere
            "fsync": "off",  # a throwaway cluster; commits are still synchronous, so an immediate stop loses none
            "max_connections": "50",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._owner(self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``fast`` ends every session cleanly, ``immediate`` as a crash would."""
        self._owner(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return self._owner(self.bin / "pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def _sql(self, statement: str, *literals: str, database: str = "postgres") -> None:
        """Run ``statement`` as the superuser, each ``%s`` replaced by one of ``literals`` quoted as SQL."""
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement.replace("%s", "{}")).format(*map(sql.Literal, literals))
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", password=self._superuser_password, dbname=database,
            autocommit=True,
        ) as connection:  # fmt: skip
            connection.execute(query)

    def url(self, database: str, *, password: str | None = None, driver: str = "") -> str:
        """The SQLAlchemy URL of ``database`` as :data:`ROLE` (``driver``: e.g. ``+psycopg``; none: SQLAlchemy's
        default driver for ``postgresql://``)."""
        secret = self.password if password is None else password
        return f"postgresql{driver}://{ROLE}:{secret}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Make the database ``name`` owned by :data:`ROLE`; its URL."""
        self._sql(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url(name)

    def close(self) -> None:
        """Stop the server if it runs and remove its folder: nothing of it stays."""
        try:
            if (self.data / "postmaster.pid").is_file():
                self.stop("fast")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
