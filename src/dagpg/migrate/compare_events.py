"""One run's events, read through Dagster's APIs on both instances and compared in order.

Used by the verification (verify.py) and by its second process (verify_worker.py), which
compares a share of the runs on another core.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagpg.migrate import cursors
from dagpg.migrate.report import Verification

PAGE = 1000
_HOLDS_STORAGE_IDS = {"ASSET_CHECK_EVALUATION"}


@dataclass
class EventComparer:
    source: object        # DagsterInstance over SQLite (read-only)
    target: object        # DagsterInstance over PostgreSQL
    ids: cursors.IdMap    # the source's storage ids -> the target's
    result: Verification

    def run_events(self, run_id: str) -> None:
        cur_s = cur_t = None
        last_storage_id = 0
        seen = 0
        while True:
            conn_s = self.source.get_records_for_run(run_id, cursor=cur_s, limit=PAGE)
            conn_t = self.target.get_records_for_run(run_id, cursor=cur_t, limit=PAGE)
            recs_s, recs_t = conn_s.records, conn_t.records
            if len(recs_s) != len(recs_t):  # an event missing: comparing by position is moot
                self.result.differ("events", run_id or "(runless)",
                                   f"{seen + len(recs_s)} events in SQLite vs "
                                   f"{seen + len(recs_t)} in PostgreSQL (or more)")
                return
            for rec_s, rec_t in zip(recs_s, recs_t, strict=True):
                seen += 1
                self.result.count("events")
                if rec_t.storage_id <= last_storage_id:
                    self.result.differ("events", f"{run_id or '(runless)'}#{seen}",
                                       "order not kept in PostgreSQL")
                last_storage_id = rec_t.storage_id
                if self.entry(rec_s.event_log_entry) != rec_t.event_log_entry:
                    self.result.differ("events", f"{run_id or '(runless)'}#{seen}",
                                       f"event differs ({rec_t.event_log_entry.dagster_event_type})")
            if not (conn_s.has_more or conn_t.has_more):
                return
            cur_s, cur_t = conn_s.cursor, conn_t.cursor

    def entry(self, entry):
        """A source EventLogEntry with the storage ids it holds mapped to the new space.

        Of all event types only asset check evaluations hold one (their target
        materialization); the rest are returned as they are, unserialized (it is the hot path).
        """
        from dagster_shared.serdes import deserialize_value, serialize_value

        if entry.dagster_event_type not in _HOLDS_STORAGE_IDS:
            return entry
        text = serialize_value(entry)
        if 'storage_id"' not in text:
            return entry
        return deserialize_value(cursors.remap_serialized(text, self.ids))
