"""The CLI's surface: every command documented with an example, README in sync with --help."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg.cli import cli

PROJECT_DIR = Path(__file__).resolve().parents[1]
reference = runpy.run_path(str(PROJECT_DIR / "scripts" / "update_cli_reference.py"))
ALL_COMMANDS = [p for p in reference["commands"]() if p]


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    command = cli
    for name in path:
        command = command.commands[name]
    assert command.help and command.help.strip(), f"dagpg {' '.join(path)} has no help"
    if not hasattr(command, "commands"):  # a leaf command
        assert "Example" in result.output, f"dagpg {' '.join(path)} --help has no example"


def test_readme_cli_reference_matches_help():
    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    assert reference["START"] in readme, "README.md lacks the CLI reference markers"
    assert reference["updated"](readme) == readme, (
        "README's CLI reference is stale: run `.venv/bin/python scripts/update_cli_reference.py`"
    )


@pytest.mark.parametrize("path", [(), ("db", "up"), ("backups", "list")], ids=" ".join)
def test_readme_shows_what_the_installed_program_prints(path):
    """The real `dagpg` console script, run as a user runs it: its help is the README's block,
    `Usage: dagpg ...` included."""
    program = Path(sys.executable).parent / "dagpg"
    shown = subprocess.run([str(program), *path, "--help"], capture_output=True, text=True,
                           env={**os.environ, **reference["USER_ENV"]}, check=True).stdout
    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    assert shown.startswith(f"Usage: {' '.join(('dagpg', *path))} ")
    assert reference["block"](readme, path) == shown
    assert "Usage: cli" not in readme


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.output


@pytest.mark.parametrize("args", [["list"], ["verify", "latest"], ["prune", "--dry-run"]],
                         ids=" ".join)
def test_backup_with_a_backups_command_suggests_backups(args):
    result = CliRunner().invoke(cli, ["backup", *args], prog_name="dagpg")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: No such command '{args[0]}' for `dagpg backup`. Did you mean "
        f"`dagpg backups {' '.join(args)}`?")


def test_version():
    assert CliRunner().invoke(cli, ["--version"]).output.startswith("dagpg, version ")


def test_the_cli_starts_without_alembic_or_sqlalchemy():
    """They take a third of a second to import; only the commands that use them load them."""
    probe = "import sys, dagpg.cli; print(sorted({'alembic', 'sqlalchemy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_lost_connection_anywhere_is_one_line():
    """Issue 13, item 4: whatever raised it (psycopg2, SQLAlchemy around it, Dagster's retries
    around that), a lost connection reaching the CLI is one line and exit 1; a statement the
    server refused is not a lost connection, and stays an error of its own."""
    import psycopg2
    import sqlalchemy.exc
    from dagster_postgres.utils import DagsterPostgresException

    from dagpg.cli import DagpgGroup
    from dagpg.pg import lost_connection_reason

    lost = psycopg2.OperationalError("server closed the connection unexpectedly\n\tThis "
                                     "probably means the server terminated abnormally")
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, lost)
    try:
        raise DagsterPostgresException("too many retries for DB connection") from wrapped
    except DagsterPostgresException as exc:
        retried = exc

    group = DagpgGroup()

    @group.command()
    def fails() -> None:
        raise retried

    result = CliRunner().invoke(group, ["fails"], obj={})
    assert result.exit_code == 1
    assert result.output == (
        "Error: lost the connection to PostgreSQL (server closed the connection unexpectedly); "
        "check that the server runs (for the local server: `dagpg db status`, `dagpg db up`), "
        "then run the same command again\n")
    assert lost_connection_reason(psycopg2.InterfaceError("connection already closed")) == \
        "connection already closed"
    refused = psycopg2.errors.lookup("23505")("duplicate key value violates unique constraint")
    assert lost_connection_reason(refused) is None


@pytest.mark.parametrize("deleted, words", [(0, "0 old backups"), (1, "1 old backup"),
                                            (2, "2 old backups")])
def test_the_nightly_line_counts_in_words(tmp_path, deleted, words):
    """`dagpg nightly`'s text: "1 old backup deleted", never "1 old backups"."""
    from dagpg.backup.retention import PruneReport
    from dagpg.cli.nightly_cmds import _line
    from dagpg.nightly import BACKUP_STEP, Step

    pruned = PruneReport(tmp_path, dry_run=False, deleted=[f"b{i}" for i in range(deleted)])
    step = Step(BACKUP_STEP, skipped="the newest backup is 1.0 h old", backups_pruned=pruned)
    assert _line(step) == f"backup skipped: the newest backup is 1.0 h old; {words} deleted"


def test_counts_read_as_words():
    from dagpg.wording import count

    assert [count(0, "run"), count(1, "run"), count(1, "old backup"), count(12345, "event")] == [
        "0 runs", "1 run", "1 old backup", "12,345 events"]


def test_days_left_reads_as_a_person_would_say_it():
    from dagpg.wording import days_left

    # A fresh instance grows a few kB a day: its millions of days read as "over 10 years".
    assert [days_left(None), days_left(0.6), days_left(45.2), days_left(1_565_354)] == [
        "-", "1 day", "45 days", "over 10 years"]


def test_a_missing_dagster_home_names_the_shell_of_this_system(monkeypatch):
    import os

    from dagpg.errors import DagpgError
    from dagpg.instance import resolve_home

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(DagpgError) as err:
        resolve_home()
    shell = "$env:DAGSTER_HOME" if os.name == "nt" else "export DAGSTER_HOME="
    assert shell in str(err.value) and "\n" not in str(err.value)
