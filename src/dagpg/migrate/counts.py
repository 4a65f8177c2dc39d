"""Counts that show a migration complete: rows per table on both sides, events per run."""

from __future__ import annotations

import sqlite3

from dagpg.migrate.idmap import EventPlan
from dagpg.migrate.report import MigrationReport, TableCount
from dagpg.migrate.source import SourceFiles, sqlite_error
from dagpg.migrate.tables import INDEX, RUNS, SCHEDULES, TABLES


def source_counts(files: SourceFiles) -> dict[str, int]:
    layout = files.layout
    counts: dict[str, int] = {}
    for file, path in ((RUNS, layout.runs_db), (INDEX, layout.index_db),
                       (SCHEDULES, layout.schedules_db)):
        conn = files.connect(path, required=file != SCHEDULES)
        if conn is None:
            continue
        try:
            present = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            for spec in TABLES:
                if spec.file == file and spec.name in present:
                    counts[spec.name] = conn.execute(
                        f'SELECT count(*) FROM "{spec.name}"').fetchone()[0]  # noqa: S608
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(path, exc) from None
        finally:
            conn.close()
    return counts


def table_counts(conn, source: dict[str, int], events: int) -> list[TableCount]:
    out = []
    with conn.cursor() as cur:
        for spec in TABLES:
            cur.execute(f'SELECT count(*) FROM "{spec.name}"')  # noqa: S608
            out.append(TableCount(spec.name, source.get(spec.name, 0), cur.fetchone()[0]))
        cur.execute("SELECT count(*) FROM event_logs")
        out.append(TableCount("event_logs", events, cur.fetchone()[0],
                              "source: run shards + index-only events"))
    conn.rollback()
    return out


def compare_run_counts(conn, plan: EventPlan, report: MigrationReport) -> None:
    expected = dict(plan.db.execute(
        "SELECT s.run_key, s.n_rows + (SELECT count(*) FROM anchors a WHERE a.run_key = "
        "s.run_key AND a.pos IS NULL) FROM shards s"))
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE(run_id, ''), count(*) FROM event_logs GROUP BY 1")
        actual = dict(cur.fetchall())
    conn.rollback()
    report.runs_compared = len(set(expected) | set(actual))
    for run_id in sorted(set(expected) | set(actual)):
        if expected.get(run_id, 0) != actual.get(run_id, 0):
            report.runs_differing.append({"run_id": run_id, "source": expected.get(run_id, 0),
                                          "target": actual.get(run_id, 0)})
