"""Rewrite event storage ids held inside serialized values (records, cursors, tick bodies).

SQLite's storage ids of asset, check and run-status events are index.db ids; PostgreSQL has one
id space. `remap(old) -> new` (EventPlan.floor) maps an index id to the new id of the same
event, or for a cursor pointing at a deleted event, to the last event before it, which keeps
"events after the cursor" the same set of events.

Only fields of known Dagster classes are touched (never user metadata that happens to be called
`storage_id`). A value that cannot be read is kept as is and reported.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable
from typing import Any

Remap = Callable[[int], int]

# serdes class name -> fields holding an event storage id (int), or a {key: id} dict
STORAGE_ID_FIELDS: dict[str, tuple[str, ...]] = {
    "EventLogRecord": ("storage_id",),
    "AssetCheckEvaluationTargetMaterializationData": ("storage_id",),
    "AssetStatusCacheValue": ("latest_storage_id", "earliest_in_progress_materialization_event_id"),
    "AssetCheckState": ("latest_storage_id",),
    "RunStatusSensorCursor": ("record_id",),
    "AutomationConditionCursor": ("last_event_id",),
    "AssetConditionEvaluationState": ("max_storage_id",),
    "MultiAssetSensorAssetCursorComponent": ("latest_consumed_event_id",
                                             "trailing_unconsumed_partitioned_event_ids"),
}
UNREADABLE_CLASSES = {"LegacyAssetDaemonCursorWrapper"}
ID_KEYS_MARKER = ("storage_id", "record_id", "event_id")  # cheap pre-check on raw text

# SensorType values whose cursor Dagster itself writes (and we can therefore read)
ASSET = "ASSET"
MULTI_ASSET = "MULTI_ASSET"
RUN_STATUS = "RUN_STATUS"
DAEMON_CURSOR_TYPES = {"AUTO_MATERIALIZE", "AUTOMATION", "FRESHNESS_POLICY"}
KV_EVENT_CURSOR_PREFIX = "EVENT_LOG_CONSUMER_CURSOR-"
KV_DAEMON_CURSOR_KEYS = {"ASSET_DAEMON_CURSOR", "ASSET_DAEMON_CURSOR_NEW"}


class Unreadable(ValueError):
    """A cursor or body that holds storage ids in a form we cannot rewrite."""


def walk(obj: Any, remap: Remap) -> bool:
    """Rewrite known storage-id fields in a decoded serdes JSON tree, in place. True if changed."""
    changed = False
    if isinstance(obj, dict):
        cls = obj.get("__class__")
        if cls in UNREADABLE_CLASSES:
            raise Unreadable(cls)
        for name in STORAGE_ID_FIELDS.get(cls, ()):
            value = obj.get(name)
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                new = remap(value)
                changed |= new != value
                obj[name] = new
            elif isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(item, int) and not isinstance(item, bool):
                        value[key] = remap(item)
                        changed |= value[key] != item
        for value in obj.values():
            if isinstance(value, (dict, list)):
                changed |= walk(value, remap)
    elif isinstance(obj, list):
        for value in obj:
            if isinstance(value, (dict, list)):
                changed |= walk(value, remap)
    return changed


def remap_serialized(text: str | None, remap: Remap) -> str | None:
    """A serialized Dagster value with its storage ids rewritten (the same text if none)."""
    if not text or not any(marker in text for marker in ID_KEYS_MARKER):
        return text
    tree = json.loads(text)
    return json.dumps(tree) if walk(tree, remap) else text


def remap_sensor_cursor(cursor: str | None, sensor_type: str | None, remap: Remap) -> str | None:
    """A sensor's cursor in the new id space. Raises Unreadable for a cursor we cannot read.

    Cursors of STANDARD sensors are the user's own strings: they are returned unchanged (the
    caller reports them).
    """
    if not cursor:
        return cursor
    if sensor_type == ASSET:
        try:
            return str(remap(int(cursor)))
        except ValueError:
            raise Unreadable(f"asset sensor cursor {cursor[:40]!r}") from None
    if sensor_type == MULTI_ASSET:
        return _multi_asset(cursor, remap)
    if sensor_type == RUN_STATUS:
        return _json_cursor(cursor, remap)
    if sensor_type in DAEMON_CURSOR_TYPES:
        return _daemon_cursor(cursor, remap)
    return cursor


def _multi_asset(cursor: str, remap: Remap) -> str:
    try:
        tree = json.loads(cursor)
    except ValueError:
        raise Unreadable("multi-asset sensor cursor is not JSON") from None
    if not isinstance(tree, dict):
        raise Unreadable("multi-asset sensor cursor is not a JSON object")
    for value in tree.values():
        if isinstance(value, list) and len(value) == 3:
            if isinstance(value[1], int):
                value[1] = remap(value[1])
            if isinstance(value[2], dict):
                value[2] = {k: remap(v) if isinstance(v, int) else v for k, v in value[2].items()}
        elif isinstance(value, (dict, list)):
            walk(value, remap)
    return json.dumps(tree)


def _json_cursor(cursor: str, remap: Remap) -> str:
    try:
        tree = json.loads(cursor)
    except ValueError:
        raise Unreadable("cursor is not JSON") from None
    return json.dumps(tree) if walk(tree, remap) else cursor


def _daemon_cursor(cursor: str, remap: Remap) -> str:
    """An asset-daemon cursor: "0" + base64(zlib(JSON)), or plain JSON (older)."""
    if cursor.startswith("{"):
        return _json_cursor(cursor, remap)
    if not cursor.startswith("0"):
        raise Unreadable(f"asset daemon cursor format {cursor[:1]!r}")
    try:
        payload = zlib.decompress(base64.b64decode(cursor[1:])).decode("utf-8")
    except (ValueError, zlib.error):
        raise Unreadable("asset daemon cursor cannot be decoded") from None
    new_payload = _json_cursor(payload, remap)
    if new_payload == payload:
        return cursor
    return "0" + base64.b64encode(zlib.compress(new_payload.encode("utf-8"))).decode("utf-8")


def remap_instigator_body(body: str | None, remap: Remap) -> tuple[str | None, str | None]:
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
    problem = _rewrite_cursor(data, "cursor", _enum_value(data.get("sensor_type")), remap)
    return (body if data.get("cursor") == before else json.dumps(tree)), problem


def sensor_type_of(body: str | None) -> str | None:
    if not body:
        return None
    data = _instigator_data(json.loads(body))
    if isinstance(data, dict) and data.get("__class__") == "SensorInstigatorData":
        return _enum_value(data.get("sensor_type"))
    return None


def remap_tick_body(body: str | None, sensor_type: str | None,
                    remap: Remap) -> tuple[str | None, str | None]:
    """A TickData (job_ticks rows) with its cursor rewritten, given its sensor's type."""
    if not body or '"cursor"' not in body:
        return body, None
    tree = json.loads(body)
    if not tree.get("cursor"):
        return body, None
    before = tree["cursor"]
    problem = _rewrite_cursor(tree, "cursor", sensor_type, remap)
    return (body if tree["cursor"] == before else json.dumps(tree)), problem


def remap_kv(key: str, value: str | None, remap: Remap) -> str | None:
    """A kvs value: event-log consumer cursors are storage ids, daemon cursors hold some."""
    if value is None:
        return value
    if key.startswith(KV_EVENT_CURSOR_PREFIX):
        try:
            return str(remap(int(value)))
        except ValueError:
            raise Unreadable(f"kvs {key} is not an integer") from None
    if key in KV_DAEMON_CURSOR_KEYS:
        return _json_cursor(value, remap)
    return value


def _rewrite_cursor(tree: dict, field: str, sensor_type: str | None,
                    remap: Remap) -> str | None:
    cursor = tree.get(field)
    if not cursor:
        return None
    if sensor_type in (None, "STANDARD", "UNKNOWN"):
        return "kept: a custom sensor cursor"
    try:
        tree[field] = remap_sensor_cursor(cursor, sensor_type, remap)
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
