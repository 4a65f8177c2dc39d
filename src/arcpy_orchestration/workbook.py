"""The analyst's workbook (xlsxwriter): a Summary sheet and, within the row cap, a Parcels sheet.

Written to a temporary file beside the target and moved over it, so a failed run never leaves a
half-written workbook, and a workbook held open in Excel gives a clear error instead.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import xlsxwriter

from arcpy_orchestration.errors import OutputError
from arcpy_orchestration.gis.base import DIST_FIELD, NEAR_FIELD, DetailTable
from arcpy_orchestration.summary import AreaSummary, Summary

HEADER = {"bold": True, "bg_color": "#DDEBF7", "border": 1, "border_color": "#9BC2E6",
          "text_wrap": True, "valign": "vcenter", "align": "center"}
# Cell styles by role; the value columns' number format comes from park_access.workbook.
COUNT, AMOUNT, SHARE, METRES = "count", "amount", "share", "metres"
NUMBER_FORMATS = {COUNT: "#,##0", SHARE: "0.0%", METRES: "#,##0.0"}
DEFAULT_VALUE_FORMAT = "$#,##0"
PAPER = {"letter": 1, "a4": 9}  # xlsxwriter's set_paper() indices (Excel's paperSize)
DASH = "–"  # in a mean or median cell: no parcel of that group has a value
# Up to this many rows (overall + districts) the Summary prints on one page, and says so.
SUMMARY_ONE_PAGE_AREAS = 40


def write_workbook(path: str | os.PathLike, summary: Summary, *, detail: DetailTable | None,
                   detail_path: str | os.PathLike | None = None,
                   detail_row_cap: int | None = None, paper: str = "letter",
                   value_format: str = DEFAULT_VALUE_FORMAT) -> list[str]:
    """Write the workbook; returns its sheet names. `paper`: letter or a4; `value_format`: the
    Excel number format of the value columns (e.g. '$#,##0')."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot create the folder ({exc.strerror}); set "
                          "park_access.output_summary_path to a writable place") from None
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.xlsx")
    book = xlsxwriter.Workbook(str(tmp))
    try:
        sheets = ["Summary"]
        fmt = _formats(book, value_format)
        note = _detail_note(summary, detail, detail_path, detail_row_cap)
        _summary_sheet(book.add_worksheet("Summary"), summary, fmt, note, PAPER[paper])
        if detail is not None:
            _detail_sheet(book.add_worksheet("Parcels"), detail, summary, fmt, PAPER[paper])
            sheets.append("Parcels")
        book.close()
        os.replace(tmp, path)
    except PermissionError:
        raise OutputError(f"{path}: cannot replace the workbook (is it open in Excel?); close "
                          "it and re-run") from None
    finally:
        tmp.unlink(missing_ok=True)
    return sheets


def humanize(field: str) -> str:
    text = field.replace("_", " ").strip()
    if text.lower().endswith(" id"):
        text = text[:-3] + " ID"
    return text[:1].upper() + text[1:]


def _formats(book, value_format: str) -> dict:
    def f(**kw):
        return book.add_format(kw)

    numbers = {**NUMBER_FORMATS, AMOUNT: value_format}
    fmt = {
        "header": f(**HEADER),
        "title": f(bold=True, font_size=13),
        "area": f(),
        "area_all": f(bold=True, top=1, bottom=1),
        "note": f(italic=True, font_color="#404040", text_wrap=True, valign="top"),
        "dash": f(align="right"),
        "all:dash": f(align="right", bold=True, top=1, bottom=1),
        "center": f(align="center"),
    }
    for role, number_format in numbers.items():
        fmt[role] = f(num_format=number_format)
        fmt["all:" + role] = f(num_format=number_format, bold=True, top=1, bottom=1)
    return fmt


def _columns(summary: Summary):
    """(group header, column header, width, number format, value of an area)."""
    value = humanize(summary.value_field)
    return [
        ("Parcels", "All", 11, COUNT, lambda a: a.all.parcels),
        ("Parcels", "Near a park", 11, COUNT, lambda a: a.near.parcels),
        ("Parcels", "Not near", 11, COUNT, lambda a: a.not_near.parcels),
        ("Parcels", "Share near", 9, SHARE, lambda a: a.share_parcels_near),
        (f"{value}, total", "All", 16, AMOUNT, lambda a: a.all.total),
        (f"{value}, total", "Near a park", 16, AMOUNT, lambda a: a.near.total),
        (f"{value}, total", "Not near", 16, AMOUNT, lambda a: a.not_near.total),
        (f"{value}, total", "Share near", 9, SHARE, lambda a: a.share_value_near),
        (f"{value}, mean", "Near a park", 12, AMOUNT, lambda a: a.near.mean),
        (f"{value}, mean", "Not near", 12, AMOUNT, lambda a: a.not_near.mean),
        (f"{value}, median", "Near a park", 12, AMOUNT, lambda a: a.near.median),
        (f"{value}, median", "Not near", 12, AMOUNT, lambda a: a.not_near.median),
        (f"No {value.lower()}", "Parcels", 14, COUNT, lambda a: a.all.nulls),
    ]


def _summary_sheet(ws, summary: Summary, fmt: dict, detail_note: str, paper: int) -> None:
    columns = _columns(summary)
    ws.set_row(0, 30)
    ws.set_row(1, 30)
    ws.merge_range(0, 0, 1, 0, humanize(summary.district_field), fmt["header"])
    ws.set_column(0, 0, max(14, min(30, max(len(a.area) for a in summary.areas) + 2)))
    col = 1
    while col <= len(columns):
        group = columns[col - 1][0]
        end = col
        while end < len(columns) and columns[end][0] == group:
            end += 1
        if end > col:
            ws.merge_range(0, col, 0, end, group, fmt["header"])
        else:
            ws.write(0, col, group, fmt["header"])
        col = end + 1
    for c, (_group, header, width, _num, _value) in enumerate(columns, start=1):
        ws.write(1, c, header, fmt["header"])
        ws.set_column(c, c, width)
    for r, area in enumerate(summary.areas, start=2):
        _summary_row(ws, r, area, columns, fmt, overall=r == 2)
    ws.freeze_panes(2, 1)
    row = len(summary.areas) + 3
    width = sum(c[2] for c in columns) + 14
    for line in _notes(summary, detail_note):
        # Merged across the table and wrapped: Excel does not size merged rows, so estimate.
        ws.merge_range(row, 0, row, len(columns), line, fmt["note"])
        ws.set_row(row, 15 * (len(line) // int(width * 1.1) + 1))
        row += 1
    one_page = len(summary.areas) <= SUMMARY_ONE_PAGE_AREAS
    _print_setup(ws, paper, landscape=True, rows=(0, 1), tall=1 if one_page else 0,
                 title=f"Parcels within {summary.walk_distance_m:,g} m of a park",
                 # Its own pages only: &N would count every sheet printed with it.
                 footer="Summary, page 1 of 1" if one_page else "Summary, page &P")


def _summary_row(ws, r: int, area: AreaSummary, columns, fmt: dict, overall: bool) -> None:
    prefix = "all:" if overall else ""
    ws.write_string(r, 0, area.area, fmt["area_all" if overall else "area"])
    for c, (_g, _h, _w, num, value) in enumerate(columns, start=1):
        v = value(area)
        if v is None:  # a mean or median of no values: see the notes
            ws.write_string(r, c, DASH, fmt[prefix + "dash"])
        else:
            ws.write_number(r, c, v, fmt[prefix + num])


def _notes(summary: Summary, detail_note: str) -> list[str]:
    o = summary.overall
    notes = summary.notes
    wkid = notes.get("working_wkid")
    crs = f" in the working coordinate system (WKID {wkid})" if wkid else ""
    value = summary.value_field
    lines = [
        f"Near a park: planar distance from the parcel's edge to the nearest park's edge is at "
        f"most {summary.walk_distance_m:,g} m{crs}. A parcel inside a park counts; a parcel "
        "near several parks counts once.",
        f"Totals, means and medians of {value} use the parcels that have one; {o.all.nulls:,} "
        f"parcels have no {value} ({o.near.nulls:,} near a park, {o.not_near.nulls:,} not) and "
        f"are counted under 'No {humanize(value).lower()}'. Shares of value are of the total "
        "over parcels with a value.",
        f"{DASH} in a mean or median: no parcel in that group has a value of {value} (e.g. a "
        "district with no parcel near a park), so there is nothing to average.",
        detail_note,
    ]
    sources = ", ".join(f"{k} {notes[k]}" for k in ("parcels", "parks") if notes.get(k))
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines.append(f"Sources: {sources or summary.parcels}; {notes.get('backend', '?')} backend; "
                 f"written {stamp}.")
    return lines


def _detail_note(summary: Summary, detail: DetailTable | None, detail_path,
                 cap: int | None) -> str:
    if detail is not None:
        return "Every parcel, with its distance to the nearest park: sheet 'Parcels'."
    n = summary.overall.all.parcels
    where = Path(detail_path) if detail_path else None
    return (f"Every parcel ({n:,}, more than this workbook's cap of {cap or 0:,} rows) with its "
            f"near flag and distance to the nearest park: {where.name if where else '?'} "
            f"beside this workbook ({where}).")


def _detail_sheet(ws, detail: DetailTable, summary: Summary, fmt: dict, paper: int) -> None:
    headers = [humanize(c) for c in detail.columns]
    names = list(detail.columns)
    headers[names.index(NEAR_FIELD)] = f"Near a park\n(≤ {summary.walk_distance_m:,g} m)"
    headers[names.index(DIST_FIELD)] = "Distance to nearest park (m)"
    widths = [12, 16, 16, 17, 16]
    ws.set_row(0, 30)
    for c, header in enumerate(headers):
        ws.write_string(0, c, header, fmt["header"])
        ws.set_column(c, c, widths[c] if c < len(widths) else 14)
    near_col, dist_col = names.index(NEAR_FIELD), names.index(DIST_FIELD)
    value_col = names.index(summary.value_field) if summary.value_field in names else -1
    value_fmt, metres_fmt, center = fmt[AMOUNT], fmt[METRES], fmt["center"]
    r = 0
    for r, row in enumerate(detail.rows, start=1):
        for c, v in enumerate(row):
            if v is None:
                continue
            if c == near_col:
                ws.write_string(r, c, "Yes" if v == 1 else "No", center)
            elif c == 0:
                ws.write(r, c, v, center)
            elif c == dist_col:
                ws.write_number(r, c, v, metres_fmt)
            elif c == value_col:
                ws.write_number(r, c, v, value_fmt)
            else:
                ws.write(r, c, v)
    ws.freeze_panes(1, 0)
    ws.autofilter(0, 0, max(r, 1), len(headers) - 1)
    # Portrait: five narrow columns, so a page holds half as many rows again as in landscape.
    _print_setup(ws, paper, landscape=False, rows=(0, 0), tall=0,
                 title=f"Parcels and their distance to the nearest park ({detail.count:,} parcels)",
                 footer="Parcels, page &P")


def _print_setup(ws, paper: int, *, landscape: bool, rows: tuple[int, int], tall: int,
                 title: str, footer: str) -> None:
    """One page wide (`tall` pages high, 0: as many as needed), header rows repeated on every
    page, the sheet's own page numbers (from 1, whatever is printed before it)."""
    if landscape:
        ws.set_landscape()
    else:
        ws.set_portrait()
    ws.set_paper(paper)
    ws.fit_to_pages(1, tall)
    ws.repeat_rows(*rows)
    ws.set_start_page(1)
    ws.set_header(f"&L&B{title.replace('&', '&&')}&R&D")
    ws.set_footer(f"&C{footer}")
