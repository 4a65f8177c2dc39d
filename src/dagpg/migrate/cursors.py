"""Rewrite event storage ids held inside serialized values (records, cursors, tick bodies).

SQLite's storage ids of asset, check and run-status events are index.db ids; PostgreSQL has one
id space. Two kinds of values hold them, and they map differently (`IdMap`):

- a *cursor* is a position ("events after this one"): an index id maps to the new id of the
  same event, and one whose event was deleted to the last event before it, which keeps "events
  after the cursor" the same set of events (EventPlan.floor). A cursor may move back.
- a *pointer* names one specific event (a record's storage id, the materialization an asset
  check evaluated, a multi-asset sensor's unconsumed events): it maps to that event's new id,
  found through its index row, or when that row is gone (a wiped asset) through the event's run,
  time and asset in its run's shard; when the event exists nowhere, to NO_EVENT (0), an id no
  event has, just as none has the old id in the source. A pointer never moves to another event.

Only fields of known Dagster classes are touched (never user metadata that happens to be called
`storage_id`). A value that cannot be read is kept as is and reported.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Remap = Callable[[int], int]
NO_EVENT = 0  # the id of no event: PostgreSQL's sequences start at 1


@dataclass(frozen=True)
class EventRef:
    """What identifies an event besides its storage id, to find it when its index row is gone."""

    run_id: str | None
    timestamp: float | None
    asset_key: str | None  # AssetKey.to_string(), as event_logs.asset_key holds it
    kind: str              # its dagster_event_type


EventPointer = Callable[[int, "EventRef | None"], int]


@dataclass(frozen=True)
class IdMap:
    """How the source's storage ids become the target's (see the module's docstring)."""

    cursor: Remap
    event: EventPointer


# serdes class name -> fields holding a cursor: an event storage id (int), or a {key: id} dict
STORAGE_ID_FIELDS: dict[str, tuple[str, ...]] = {
    "AssetStatusCacheValue": ("latest_storage_id", "earliest_in_progress_materialization_event_id"),
    "AssetCheckState": ("latest_storage_id",),
    "RunStatusSensorCursor": ("record_id",),
    "AutomationConditionCursor": ("last_event_id",),
    "AssetConditionEvaluationState": ("max_storage_id",),
    "MultiAssetSensorAssetCursorComponent": ("latest_consumed_event_id",),
}
# serdes class name -> fields holding pointers to specific events (see _pointers)
POINTER_FIELDS: dict[str, tuple[str, ...]] = {
    "EventLogRecord": ("storage_id",),
    "AssetCheckEvaluationTargetMaterializationData": ("storage_id",),
    "MultiAssetSensorAssetCursorComponent": ("trailing_unconsumed_partitioned_event_ids",),
}
UNREADABLE_CLASSES = {"LegacyAssetDaemonCursorWrapper"}
ID_KEYS_MARKER = ("storage_id", "record_id", "event_id")  # cheap pre-check on raw text
MATERIALIZATION = "ASSET_MATERIALIZATION"

# SensorType values whose cursor Dagster itself writes (and we can therefore read)
ASSET = "ASSET"
MULTI_ASSET = "MULTI_ASSET"
RUN_STATUS = "RUN_STATUS"
DAEMON_CURSOR_TYPES = {"AUTO_MATERIALIZE", "AUTOMATION", "FRESHNESS_POLICY"}
KV_EVENT_CURSOR_PREFIX = "EVENT_LOG_CONSUMER_CURSOR-"
KV_DAEMON_CURSOR_KEYS = {"ASSET_DAEMON_CURSOR", "ASSET_DAEMON_CURSOR_NEW"}


class Unreadable(ValueError):
    """A cursor or body that holds storage ids in a form we cannot rewrite."""


def walk(obj: Any, ids: IdMap, asset_key: str | None = None) -> bool:
    """Rewrite known storage-id fields in a decoded serdes JSON tree, in place. True if changed.
    `asset_key`: that of the enclosing asset check evaluation (its target's asset)."""
    changed = False
    if isinstance(obj, dict):
        cls = obj.get("__class__")
        if cls in UNREADABLE_CLASSES:
            raise Unreadable(cls)
        if cls == "AssetCheckEvaluation":
            asset_key = _asset_key_string(obj.get("asset_key")) or asset_key
        for name in STORAGE_ID_FIELDS.get(cls, ()):
            changed |= _map_field(obj, name, ids.cursor)
        if cls in POINTER_FIELDS:
            changed |= _pointers(obj, cls, ids, asset_key)
        for value in obj.values():
            if isinstance(value, (dict, list)):
                changed |= walk(value, ids, asset_key)
    elif isinstance(obj, list):
        for value in obj:
            if isinstance(value, (dict, list)):
                changed |= walk(value, ids, asset_key)
    return changed


def _map_field(obj: dict, name: str, remap: Remap) -> bool:
    """An int field, or each int of a {key: id} field, through `remap`."""
    value = obj.get(name)
    changed = False
    if isinstance(value, int) and not isinstance(value, bool):
        obj[name] = remap(value)
        changed = obj[name] != value
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, int) and not isinstance(item, bool):
                value[key] = remap(item)
                changed |= value[key] != item
    return changed


def _pointers(obj: dict, cls: str, ids: IdMap, asset_key: str | None) -> bool:
    if cls == "EventLogRecord":
        entry = obj.get("event_log_entry")
        ref = None
        if isinstance(entry, dict):
            event = entry.get("dagster_event")
            kind = _enum_value(event.get("event_type_value")) if isinstance(event, dict) else None
            ref = EventRef(entry.get("run_id"), entry.get("timestamp"),
                           _asset_key_string(_first_asset_key(event)), kind or "")
        return _map_field(obj, "storage_id", lambda old: ids.event(old, ref))
    if cls == "AssetCheckEvaluationTargetMaterializationData":
        ref = EventRef(obj.get("run_id"), obj.get("timestamp"), asset_key, MATERIALIZATION)
        return _map_field(obj, "storage_id", lambda old: ids.event(old, ref))
    changed = False
    for name in POINTER_FIELDS[cls]:  # ids without anything else to find their events by
        changed |= _map_field(obj, name, lambda old: ids.event(old, None))
    return changed


def _asset_key_string(value: Any) -> str | None:
    """AssetKey.to_string() of a serialized AssetKey (json.dumps of its path)."""
    if isinstance(value, dict) and value.get("__class__") == "AssetKey":
        path = value.get("path")
        if isinstance(path, list):
            return json.dumps(path)
    return None


def _first_asset_key(tree: Any) -> dict | None:
    if isinstance(tree, dict):
        if tree.get("__class__") == "AssetKey":
            return tree
        values = tree.values()
    elif isinstance(tree, list):
        values = tree
    else:
        return None
    for value in values:
        found = _first_asset_key(value)
        if found is not None:
            return found
    return None


def remap_serialized(text: str | None, ids: IdMap) -> str | None:
    """A serialized Dagster value with its storage ids rewritten (the same text if none)."""
    if not text or not any(marker in text for marker in ID_KEYS_MARKER):
        return text
    tree = json.loads(text)
    return json.dumps(tree) if walk(tree, ids) else text


def remap_sensor_cursor(cursor: str | None, sensor_type: str | None, ids: IdMap) -> str | None:
    """A sensor's cursor in the new id space. Raises Unreadable for a cursor we cannot read.

    Cursors of STANDARD sensors are the user's own strings: they are returned unchanged (the
    caller reports them).
    """
    if not cursor:
        return cursor
    if sensor_type == ASSET:
        try:
            return str(ids.cursor(int(cursor)))
        except ValueError:
            raise Unreadable(f"asset sensor cursor {cursor[:40]!r}") from None
    if sensor_type == MULTI_ASSET:
        return _multi_asset(cursor, ids)
    if sensor_type == RUN_STATUS:
        return _json_cursor(cursor, ids)
    if sensor_type in DAEMON_CURSOR_TYPES:
        return _daemon_cursor(cursor, ids)
    return cursor


def _multi_asset(cursor: str, ids: IdMap) -> str:
    """{asset key: [latest consumed partition, latest consumed id (a cursor), {partition:
    unconsumed event id (pointers)}]}"""
    try:
        tree = json.loads(cursor)
    except ValueError:
        raise Unreadable("multi-asset sensor cursor is not JSON") from None
    if not isinstance(tree, dict):
        raise Unreadable("multi-asset sensor cursor is not a JSON object")
    for value in tree.values():
        if isinstance(value, list) and len(value) == 3:
            if isinstance(value[1], int):
                value[1] = ids.cursor(value[1])
            if isinstance(value[2], dict):
                value[2] = {k: ids.event(v, None) if isinstance(v, int) else v
                            for k, v in value[2].items()}
        elif isinstance(value, (dict, list)):
            walk(value, ids)
    return json.dumps(tree)


def _json_cursor(cursor: str, ids: IdMap) -> str:
    try:
        tree = json.loads(cursor)
    except ValueError:
        raise Unreadable("cursor is not JSON") from None
    return json.dumps(tree) if walk(tree, ids) else cursor


def _daemon_cursor(cursor: str, ids: IdMap) -> str:
    """An asset-daemon cursor: "0" + base64(zlib(JSON)), or plain JSON (older)."""
    if cursor.startswith("{"):
        return _json_cursor(cursor, ids)
    if not cursor.startswith("0"):
        raise Unreadable(f"asset daemon cursor format {cursor[:1]!r}")
    try:
        payload = zlib.decompress(base64.b64decode(cursor[1:])).decode("utf-8")
    except (ValueError, zlib.error):
        raise Unreadable("asset daemon cursor cannot be decoded") from None
    new_payload = _json_cursor(payload, ids)
    if new_payload == payload:
        return cursor
    return "0" + base64.b64encode(zlib.compress(new_payload.encode("utf-8"))).decode("utf-8")


def remap_instigator_body(body: str | None, ids: IdMap) -> tuple[str | None, str | None]:
    """An InstigatorState (instigators/jobs rows) with its sensor cursor rewritten.

    Returns (body, problem): problem names a cursor kept unchanged, else None.
    """
    if not body:
        return body, None
    tree = json.loads(body)
    data = _instigator_data(tree)
    if not isinstance(data, dict) or data.get("__class__") != "SensorInstigatorData":
        return body, None
    before = data.get("cursor")
    problem = _rewrite_cursor(data, "cursor", _enum_value(data.get("sensor_type")), ids)
    return (body if data.get("cursor") == before else json.dumps(tree)), problem


def sensor_type_of(body: str | None) -> str | None:
    if not body:
        return None
    data = _instigator_data(json.loads(body))
    if isinstance(data, dict) and data.get("__class__") == "SensorInstigatorData":
        return _enum_value(data.get("sensor_type"))
    return None


def remap_tick_body(body: str | None, sensor_type: str | None,
                    ids: IdMap) -> tuple[str | None, str | None]:
    """A TickData (job_ticks rows) with its cursor rewritten, given its sensor's type."""
    if not body or '"cursor"' not in body:
        return body, None
    tree = json.loads(body)
    if not tree.get("cursor"):
        return body, None
    before = tree["cursor"]
    problem = _rewrite_cursor(tree, "cursor", sensor_type, ids)
    return (body if tree["cursor"] == before else json.dumps(tree)), problem


def remap_kv(key: str, value: str | None, ids: IdMap) -> str | None:
    """A kvs value: event-log consumer cursors are storage ids, daemon cursors hold some."""
    if value is None:
        return value
    if key.startswith(KV_EVENT_CURSOR_PREFIX):
        try:
            return str(ids.cursor(int(value)))
        except ValueError:
            raise Unreadable(f"kvs {key} is not an integer") from None
    if key in KV_DAEMON_CURSOR_KEYS:
        return _json_cursor(value, ids)
    return value


def _rewrite_cursor(tree: dict, field: str, sensor_type: str | None,
                    ids: IdMap) -> str | None:
    cursor = tree.get(field)
    if not cursor:
        return None
    if sensor_type in (None, "STANDARD", "UNKNOWN"):
        return "kept: a custom sensor cursor"
    try:
        tree[field] = remap_sensor_cursor(cursor, sensor_type, ids)
    except Unreadable as exc:
        return f"kept: {exc}"
    return None


def _instigator_data(tree: dict):
    # serdes stores InstigatorState.instigator_data under its old name, job_specific_data
    return tree.get("job_specific_data", tree.get("instigator_data"))


def _enum_value(value: Any) -> str | None:
    # serdes writes enums as {"__enum__": "SensorType.ASSET"}
    if isinstance(value, dict) and "__enum__" in value:
        return str(value["__enum__"]).rsplit(".", 1)[-1]
    return value if isinstance(value, str) else None
