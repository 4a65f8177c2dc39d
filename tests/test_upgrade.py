"""`dagpg upgrade` on an instance an OLDER Dagster wrote.

An older dagster/dagster-postgres pair (tests/old_dagster.py, a second virtual environment)
writes a real PostgreSQL instance: runs, three partitions, check executions, a schedule with
ticks; its own install of the kit creates the kit's schema and takes the nightly backup (whose
manifest records the old versions). Then, with the installed Dagster, the tests walk what a
sysadmin does, in order, on that one instance: verify names the command, rehearse (the live
database byte-for-byte unchanged), a failing migration (nothing changed), a refused apply (the
daemon heart-beats), the apply, retention, the old Dagster told to reinstall the new one, the
rollback. The steps share the instance, so they run in this file's order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dagpg import pg
from dagpg.backup.retention import prune_backups
from dagpg.instance import Instance, resolve_instance
from dagpg.localdb import free_port
from dagpg.pgbin import find_program
from dagpg.settings import KitSettings
from dagpg.upgrade import inventory, record
from dagpg.upgrade.revisions import SCRIPTS_OVERRIDE_VAR
from dagpg.verify import checks, database
from dagpg.verify.database import dagster_head_revision
from tests import pgharness
from tests.backup_support import error_line, run_cli
from tests.old_dagster import OLD_DAGSTER, OLD_DAGSTER_POSTGRES, old_venv

pytestmark = pytest.mark.slow

INSTALLED = "1.13.27"
HEAD = dagster_head_revision()  # read from the installed Dagster's files, not from dagpg.upgrade
PIP_OLD = (f'pip install "dagster=={OLD_DAGSTER}" "dagster-webserver=={OLD_DAGSTER}" '
           f'"dagster-graphql=={OLD_DAGSTER}" "dagster-postgres=={OLD_DAGSTER_POSTGRES}"')


@dataclass
class Old:
    home: Path
    root: Path
    backups: Path
    database: str
    server: pgharness.PgServer
    venv: object
    env: dict[str, str]
    revision: str
    history: dict
    state: dict = field(default_factory=dict)

    @property
    def instance(self) -> Instance:
        return resolve_instance(self.home)

    def sql(self, query: str):
        with pg.connection(self.instance.target) as conn, conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall() if cur.description else None

    def dump(self, *args: str) -> str:
        """A plain pg_dump of the live database (the random \\restrict key lines left out)."""
        pg_dump = find_program("pg_dump")
        out = subprocess.run([str(pg_dump.path), "--no-password", *args],
                             env={**os.environ, **self.instance.target.libpq_env()},
                             capture_output=True, text=True, check=True).stdout
        return "\n".join(ln for ln in out.splitlines()
                         if not ln.startswith(("\\restrict", "\\unrestrict")))

    def inventory(self) -> inventory.Inventory:
        with pg.connection(self.instance.target) as conn:
            return inventory.from_sql(conn)


@pytest.fixture(scope="module")
def old(pg_server, tmp_path_factory):
    venv = old_venv()
    if venv.created_in_s is not None:
        print(f"\nthe Dagster {OLD_DAGSTER} environment was created in {venv.created_in_s:.1f}s")
    root = tmp_path_factory.mktemp("upgrade")
    database_name = pg_server.create_database()
    home = pgharness.write_dagster_home(root / "dagster_home", pg_server.target(database_name))
    env = {"DAGSTER_HOME": str(home), pgharness.PASSWORD_VAR: pg_server.admin.password or ""}
    history = venv.write_history(env, root)
    venv.dagpg("db", "upgrade", env=env, cwd=root)
    backups = root / "backups"
    venv.dagpg("backup", "--dest", str(backups), env=env, cwd=root)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(root)
        state = Old(home=home, root=root, backups=backups, database=database_name,
                    server=pg_server, venv=venv, env=env, revision="", history=history)
        state.revision = state.sql("SELECT version_num FROM alembic_version")[0][0]
        yield state
    pg_server.drop_database(database_name)


def test_the_old_dagster_wrote_a_real_history(old):
    assert old.history["dagster"] == OLD_DAGSTER
    assert old.revision != HEAD
    counts = old.inventory().counts()
    assert counts["runs"] == 8  # 2 with the check, 3 partitions, 3 from schedule ticks
    assert counts["ticks"] == old.history["ticks"] == 3
    assert counts["materialized partitions"] == 3
    assert counts["check executions"] == 5
    manifest = json.loads(next(old.backups.glob("*/manifest.json")).read_text())
    assert (manifest["dagster_version"], manifest["dagster_postgres_version"]) == (
        OLD_DAGSTER, OLD_DAGSTER_POSTGRES)
    assert manifest["alembic"]["dagster"] == old.revision


def test_verify_names_rehearse_then_apply_for_a_schema_behind(old):
    instance = old.instance
    result = checks.database(instance, database.observe(instance, timeout=5))
    assert result.status == checks.FAIL
    assert result.detail == (
        f"Dagster schema at {old.revision}, not head {HEAD}: the installed Dagster {INSTALLED} "
        "is newer: run `dagpg upgrade --rehearse`, then stop the services and run "
        "`dagpg upgrade --apply`")


def test_rehearse_without_a_verified_backup_is_one_line(old, tmp_path):
    before = old.dump()
    result = run_cli("upgrade", "--rehearse", "--dir", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: no verified backup in {tmp_path / 'none'}, and the rehearsal needs one; run "
        "`dagpg backup` (then `dagpg backups verify latest`) and try again")
    assert old.dump() == before


def test_another_instances_backup_in_the_folder_does_not_count(old, tmp_path, template_database):
    """A backups folder several instances share: the rehearsal and the move use a backup of
    their own database, never the newest of another (it would prove nothing about this one)."""
    other_db = old.server.create_database(template=template_database)
    empty_db = old.server.create_database()
    try:
        other = pgharness.write_dagster_home(tmp_path / "other_home",
                                             old.server.target(other_db))
        empty = pgharness.write_dagster_home(tmp_path / "empty_home",
                                             old.server.target(empty_db))
        shared = tmp_path / "shared_backups"
        taken = run_cli("backup", "--dagster-home", str(other), "--dest", str(shared))
        assert taken.exit_code == 0, taken.output + taken.stderr
        before = old.dump()
        for argv, what in ((["upgrade", "--rehearse"], "the rehearsal"),
                           (["db", "move", "--to-dagster-home", str(empty), "--force"],
                            "moving the database")):
            result = run_cli(*argv, "--dir", str(shared))
            assert result.exit_code == 1, result.output + result.stderr
            assert error_line(result) == (
                f"Error: no verified backup of {old.instance.target.where} in {shared} (the "
                f"newest there is of {old.server.target(other_db).where}), and {what} needs "
                "one; run `dagpg backup` (then `dagpg backups verify latest`) and try again")
        assert old.dump() == before
        with pg.connection(old.server.target(empty_db)) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
                        "('pg_catalog', 'information_schema')")
            assert cur.fetchone()[0] == 0
            cur.execute("CREATE TABLE someone_elses (x int)")
        # A target holding one table is named exactly (no "..." for more that are not there).
        result = run_cli("db", "move", "--to-dagster-home", str(empty), "--force", "--dir",
                         str(old.backups))
        assert result.exit_code == 1
        assert error_line(result).startswith(
            f"Error: the target database {old.server.target(empty_db).where} is not empty (it "
            "holds someone_elses); give a new, empty database")
    finally:
        old.server.drop_database(other_db)
        old.server.drop_database(empty_db)


def test_rehearse_reports_the_change_and_leaves_the_live_database_as_it_was(old, monkeypatch):
    monkeypatch.setattr(inventory, "SPLIT_FROM", 1)  # half the runs' events in a second process
    before = old.dump()
    databases = old.sql("SELECT datname FROM pg_database ORDER BY 1")
    old.server.create_database("dagpg_rehearse_0123456789ab")  # as a killed rehearsal leaves
    result = run_cli("upgrade", "--rehearse", "--dir", str(old.backups), "--json")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["changed"] and report["differences"] == []
    assert report["migration"]["before"] == old.revision
    assert report["migration"]["after"] == report["head"] == HEAD
    assert [s["revision"] for s in report["steps"]][-1] == HEAD
    assert report["steps"][0]["from"] == old.revision
    assert report["backup_dagster"] == OLD_DAGSTER
    assert report["migration"]["duration_s"] > 0
    assert report["estimate_s"] >= report["migration"]["duration_s"]
    assert report["counts"] == old.inventory().counts()
    old.state["rehearsal_s"] = report["migration"]["duration_s"]
    assert old.dump() == before  # byte for byte
    # The scratch database dropped, and the one a killed rehearsal left too.
    assert old.sql("SELECT datname FROM pg_database ORDER BY 1") == databases


def failing_scripts(folder: Path) -> Path:
    """Dagster's alembic scripts plus two revisions: one adding a column (real DDL), then one
    that cannot apply (a NOT NULL column without a default on a table with rows)."""
    import dagster

    shutil.copytree(Path(dagster.__file__).parent / "_core" / "storage" / "alembic", folder,
                    ignore=shutil.ignore_patterns("__pycache__"))
    header = "import sqlalchemy as sa\nfrom alembic import op\n\nbranch_labels = None\n" \
             "depends_on = None\n"
    (folder / "versions" / "zz1_dagpg_probe.py").write_text(
        f'{header}revision = "dagpg_probe_ok"\ndown_revision = "{HEAD}"\n\n\n'
        "def upgrade():\n"
        '    op.add_column("runs", sa.Column("dagpg_probe", sa.Text(), nullable=True))\n')
    (folder / "versions" / "zz2_dagpg_fail.py").write_text(
        f'{header}revision = "dagpg_probe_fail"\ndown_revision = "dagpg_probe_ok"\n\n\n'
        "def upgrade():\n"
        '    op.add_column("runs", sa.Column("must_have", sa.Text(), nullable=False))\n')
    return folder


def probe_column(old: Old, database_name: str | None = None) -> bool:
    target = old.instance.target
    with pg.connection(target, database=database_name) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'runs' "
                    "AND column_name = 'dagpg_probe'")
        return cur.fetchone()[0] == 1


def test_dagster_own_upgrade_is_not_one_transaction(old, tmp_path):
    """Why dagpg runs the revisions itself: Dagster's instance.upgrade() commits revision by
    revision (AUTOCOMMIT engines), so a failing revision leaves the one before it applied."""
    from dagster import DagsterInstance
    from dagster_postgres.event_log import event_log
    from dagster_postgres.run_storage import run_storage
    from dagster_postgres.schedule_storage import schedule_storage
    from dagster_postgres.utils import pg_alembic_config

    copy = old.server.create_database(template=old.database)
    home = pgharness.write_dagster_home(tmp_path / "copy_home", old.server.target(copy))
    configs = [pg_alembic_config(m.__file__) for m in (run_storage, event_log, schedule_storage)]
    location = configs[0].get_main_option("script_location")
    scripts = failing_scripts(tmp_path / "scripts")
    try:
        for config in configs:  # Dagster's own (cached) configs, pointed at the failing chain
            config.set_main_option("script_location", str(scripts))
        dagster = DagsterInstance.from_config(str(home))
        with pytest.raises(Exception, match="must_have"):
            dagster.upgrade()
        dagster.dispose()
        with pg.connection(old.instance.target, database=copy) as conn, conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            assert cur.fetchone()[0] == "dagpg_probe_ok"  # half way
        assert probe_column(old, copy)
    finally:
        for config in configs:
            config.set_main_option("script_location", location)
        old.server.drop_database(copy)


def test_a_failing_migration_leaves_the_old_revision_and_all_data(old, tmp_path, monkeypatch):
    monkeypatch.setenv(SCRIPTS_OVERRIDE_VAR, str(failing_scripts(tmp_path / "scripts")))
    before = old.dump("--schema=public")
    inv = old.inventory()
    result = run_cli("upgrade", "--apply", "--dir", str(old.backups))
    assert result.exit_code == 1
    line = error_line(result)
    pre = sorted(p.name for p in old.backups.glob("*-pre-upgrade"))
    assert len(pre) == 1
    assert line == (
        'Error: revision dagpg_probe_ok -> dagpg_probe_fail failed (column "must_have" of '
        'relation "runs" contains null values); it ran in one transaction, which was rolled '
        f"back: the schema is still at {old.revision}, with all its data (pre-upgrade backup "
        f"{pre[0]} holds it too); fix the cause and run `dagpg upgrade --apply` again; to go "
        f"back to the Dagster that wrote it: {PIP_OLD}")
    assert old.sql("SELECT version_num FROM alembic_version") == [(old.revision,)]
    assert not probe_column(old)  # the revision before the failing one was rolled back too
    assert old.dump("--schema=public") == before
    assert old.inventory() == inv
    assert record.read(old.backups / pre[0])["status"] == record.FAILED


def test_killed_during_the_migration_the_database_stays_as_it_was(old, tmp_path):
    """SIGKILL in the middle of the migration (a revision kills its own process after the one
    before it added a column): PostgreSQL rolls the transaction back; the record says
    `started`, and the next `--apply` (the test after this one) finishes the upgrade."""
    scripts = failing_scripts(tmp_path / "scripts")
    (scripts / "versions" / "zz2_dagpg_fail.py").write_text(
        'import os\nimport signal\n\nrevision = "dagpg_probe_fail"\n'
        'down_revision = "dagpg_probe_ok"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade():\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = old.dump("--schema=public")
    known = set(old.backups.glob("*-pre-upgrade"))
    killed = subprocess.run(
        [str(Path(sys.executable).parent / "dagpg"), "upgrade", "--apply", "--dir",
         str(old.backups)], env={**os.environ, SCRIPTS_OVERRIDE_VAR: str(scripts)},
        capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert old.sql("SELECT version_num FROM alembic_version") == [(old.revision,)]
    assert not probe_column(old)
    assert old.dump("--schema=public") == before
    [pre] = set(old.backups.glob("*-pre-upgrade")) - known
    assert record.read(pre)["status"] == record.STARTED
    old.state["killed"] = pre


def test_apply_refuses_while_the_daemon_heart_beats(old):
    from dagster import DagsterInstance
    from dagster._daemon.types import DaemonHeartbeat

    dagster = DagsterInstance.from_config(str(old.home))
    dagster.add_daemon_heartbeat(DaemonHeartbeat(
        timestamp=datetime.now(UTC).timestamp(), daemon_type="SCHEDULER", daemon_id="t",
        errors=[]))
    dagster.dispose()
    try:
        before = old.dump()
        listed = sorted(p.name for p in old.backups.iterdir())
        result = run_cli("upgrade", "--apply", "--dir", str(old.backups))
        assert result.exit_code == 1
        assert error_line(result).startswith(
            "Error: the Dagster daemon is running (SCHEDULER heartbeat ")
        assert (
            "s ago, newer than 120s); stop the services (DagsterDaemon, DagsterWebserver) and "
            "run `dagpg upgrade --apply` again, or, if they are already stopped, pass --force "
            "(or wait 1") in error_line(result)  # 120 s less the heartbeat's age
        assert error_line(result).endswith("s: a stopped daemon's heartbeats turn stale)")
        assert old.dump() == before
        assert sorted(p.name for p in old.backups.iterdir()) == listed  # no backup taken
    finally:
        old.sql("DELETE FROM daemon_heartbeats")


def test_apply_upgrades_with_every_check_equal(old):
    old.state["inventory"] = old.inventory()
    old.state["public"] = old.dump("--schema=public")
    result = run_cli("upgrade", "--apply", "--dir", str(old.backups))
    assert result.exit_code == 0, result.output + result.stderr
    out = result.stdout
    assert out.startswith("status              upgraded\n")
    assert f"schema              {old.revision} -> {HEAD}\n" in out
    assert "every check equal" in out
    assert "next                start the services (the daemon, then the webserver)\n" in out
    assert "next                run `dagpg verify`\n" in out
    assert f"`dagpg upgrade --rollback`, then {PIP_OLD}" in out
    assert old.sql("SELECT version_num FROM alembic_version") == [(HEAD,)]
    instance = old.instance
    assert checks.database(instance, database.observe(instance, timeout=5)).status == checks.OK
    pre = sorted(p.name for p in old.backups.glob("*-pre-upgrade"))[-1]
    rec = record.read(old.backups / pre)
    assert rec["status"] == record.APPLIED
    assert record.read(old.state["killed"])["status"] == record.FAILED  # it never committed
    assert rec["from_versions"]["dagster"] == OLD_DAGSTER
    # The same inventory, now through Dagster's own APIs (the installed, newer Dagster).
    from dagpg.migrate.dagster_views import target_instance

    with target_instance(instance) as dagster:
        after = inventory.from_dagster(dagster, old.state["inventory"])
    assert inventory.compare(old.state["inventory"], after) == []
    old.state["pre_upgrade"] = pre


def test_apply_again_finishes_an_upgrade_killed_after_its_migration_committed(old):
    """The state a kill between the committed migration and the end of the checks leaves: the
    schema at head, upgrade.json `started`. The same command checks against the inventory
    kept in upgrade.json and records the upgrade as applied; with nothing pending, it says
    there is nothing to do."""
    folder = old.backups / old.state["pre_upgrade"]
    record.update(folder, status=record.STARTED)
    result = run_cli("upgrade", "--apply", "--dir", str(old.backups), "--json")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "resumed" and report["backup"] == old.state["pre_upgrade"]
    assert record.read(folder)["status"] == record.APPLIED
    again = json.loads(run_cli("upgrade", "--apply", "--dir", str(old.backups),
                               "--json").stdout)
    assert again["status"] == "at head" and again["backup"] is None


def test_retention_keeps_the_pre_upgrade_backup_until_the_next_successful_upgrade(old):
    settings = KitSettings().model_copy(update={"backup": KitSettings().backup.model_copy(
        update={"keep_daily": 1, "keep_weekly": 0})})
    report = prune_backups(old.instance, settings, directory=old.backups, dry_run=True)
    applied = old.state["pre_upgrade"]
    failed = [p.name for p in old.backups.glob("*-pre-upgrade") if p.name != applied]
    assert "pre-upgrade (way back from the last upgrade)" in report.kept[applied]
    assert failed and failed[0] in report.deleted  # released by the successful upgrade


def test_the_old_dagster_is_told_which_release_wrote_the_schema(old):
    run_cli("backup", "--dest", str(old.backups))  # taken by the installed, newer Dagster
    def old_dagpg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(old.venv.python), "-c", "from dagpg.cli import main; main()", *args],
            env={**os.environ, **old.env, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
            capture_output=True, text=True, cwd=old.root, timeout=120)

    out = old_dagpg("verify", "--json", "--webserver-url", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1, out.stderr
    check = {c["name"]: c for c in json.loads(out.stdout)["checks"]}["database"]
    newest = sorted(p.name for p in old.backups.iterdir()
                    if p.is_dir() and "pre-" not in p.name)[-1]
    pip_new = f'pip install "dagster=={INSTALLED}" "dagster-postgres==0.29.27"'
    assert check["detail"] == (
        f"Dagster schema at {HEAD}, not head {old.revision}: a newer Dagster than the installed "
        f"{OLD_DAGSTER} wrote it: reinstall the version backup {newest}'s manifest records: "
        f"{pip_new}")
    before = old.dump()
    out = old_dagpg("upgrade", "--apply", "--dir", str(old.backups))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"Error: the database's Dagster schema is at {HEAD}, which the installed Dagster "
        f"{OLD_DAGSTER} does not know: a newer Dagster wrote it; reinstall it: {pip_new} "
        f"(recorded by backup {newest})")
    assert old.dump() == before


def test_rollback_brings_back_the_old_revision_and_data(old):
    result = run_cli("upgrade", "--rollback", "--dir", str(old.backups))
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == (f"restored       pre-upgrade backup {old.state['pre_upgrade']} "
                        f"(Dagster schema {old.revision})")
    assert lines[-1] == PIP_OLD
    assert old.sql("SELECT version_num FROM alembic_version") == [(old.revision,)]
    assert old.inventory() == old.state["inventory"]
    assert old.dump("--schema=public") == old.state["public"]
    assert record.read(old.backups / old.state["pre_upgrade"])["status"] == record.ROLLED_BACK
    # The old Dagster reads its instance again.
    runs = old.venv.run(["-c", "import dagster; i = dagster.DagsterInstance.get(); "
                               "print(len(i.get_runs()), len(i.get_asset_keys()))"],
                        old.env, old.root).stdout.split()
    assert runs == ["8", "2"]


@pytest.mark.parametrize("args", [(), ("--rehearse", "--apply"), ("--apply", "--backup", "x")])
def test_usage_errors_name_the_choice(args):
    result = run_cli("upgrade", *args)
    assert result.exit_code == 2  # click's usage error: usage, hint, then the one line
    assert result.stderr.strip().splitlines()[-1] in ("Error: choose one of --rehearse, --apply or --rollback",
                                  "Error: --backup goes with --rollback")
