"""The workbook an analyst opens: read back with openpyxl."""

from __future__ import annotations

import os
from pathlib import Path

import openpyxl
import pytest

from arcpy_orchestration import workbook
from arcpy_orchestration.errors import OutputError
from arcpy_orchestration.gis.base import DetailTable
from arcpy_orchestration.summary import GroupStats, Stats, assemble

FIELDS = ("parcel_id", "district", "assessed_value", "near_park", "park_dist_m")


def summary():
    groups = [
        GroupStats(None, "near", Stats(2, 2, 300.0, 150.0, 150.0)),
        GroupStats(None, "not_near", Stats(2, 1, 500.0, 500.0, 500.0)),
        GroupStats(None, "all", Stats(4, 3, 800.0, 800 / 3, 200.0)),
        GroupStats("North", "near", Stats(2, 2, 300.0, 150.0, 150.0)),
        GroupStats("North", "all", Stats(2, 2, 300.0, 150.0, 150.0)),
        GroupStats("South", "not_near", Stats(2, 1, 500.0, 500.0, 500.0)),
        GroupStats("South", "all", Stats(2, 1, 500.0, 500.0, 500.0)),
    ]
    return assemble(groups, walk_distance_m=800, value_field="assessed_value",
                    district_field="district",
                    notes={"backend": "open_source", "working_wkid": 26910,
                           "parcels": "city.gdb/parcels", "parks": "city.gdb/parks"})


ROWS = [(1, "North", 100.0, 1, 0.0), (2, "North", 200.0, 1, 799.5),
        (3, "South", None, 0, 1200.25), (4, "South", 500.0, 0, None)]


def fit(ws) -> tuple[int, int]:
    """Pages wide and tall when printed (1 where the file leaves OOXML's default)."""
    setup = ws.page_setup
    return (1 if setup.fitToWidth is None else setup.fitToWidth,
            1 if setup.fitToHeight is None else setup.fitToHeight)


def test_summary_sheet_reads_like_a_report(tmp_path):
    path = tmp_path / "reports" / "summary.xlsx"
    sheets = workbook.write_workbook(path, summary(), detail=DetailTable(FIELDS, 4, iter(ROWS)))
    assert sheets == ["Summary", "Parcels"]
    book = openpyxl.load_workbook(path)
    ws = book["Summary"]
    assert [c.value for c in ws[1]][:6] == ["District", "Parcels", None, None, None,
                                            "Assessed value, total"]
    assert [c.value for c in ws[2]][1:5] == ["All", "Near a park", "Not near", "Share near"]
    assert ws.freeze_panes == "B3"
    assert [c.value for c in ws[3]][:5] == ["All parcels", 4, 2, 2, 0.5]
    assert ws["A3"].font.b and ws["B3"].number_format == "#,##0"
    assert ws["E3"].number_format == "0.0%" and ws["I3"].value == pytest.approx(300 / 800)
    # North has no parcel that is not near a park: no mean, no median, a dash and a note.
    assert [ws.cell(4, c).value for c in (1, 2, 3, 4, 11, 13)] == ["North", 2, 2, 0, "–", "–"]
    assert ws.cell(4, 11).alignment.horizontal == "right"
    assert ws.cell(5, 1).value == "South" and ws.cell(5, 14).value == 1  # no value: counted
    assert ws.column_dimensions["F"].width > 15
    # Value columns (totals, means, medians) in the configured format, "$#,##0" by default.
    assert {ws[f"{c}3"].number_format for c in "FGHJKLM"} == {"$#,##0"}
    notes = [ws.cell(r, 1).value for r in range(7, 12)]
    assert notes[0].startswith("Near a park: planar distance from the parcel's edge to the "
                               "nearest park's edge is at most 800 m")
    assert "1 parcels have no assessed_value (0 near a park, 1 not)" in notes[1]
    assert notes[2] == ("– in a mean or median: no parcel in that group has a value of "
                        "assessed_value (e.g. a district with no parcel near a park), so there is "
                        "nothing to average.")
    assert notes[3] == "Every parcel, with its distance to the nearest park: sheet 'Parcels'."
    assert notes[4].startswith("Sources: parcels city.gdb/parcels, parks city.gdb/parks; "
                               "open_source backend;")
    # Printed: Letter, landscape, one page with both header rows, its own page count.
    setup = ws.page_setup
    assert (setup.orientation, setup.paperSize, *fit(ws)) == ("landscape", 1, 1, 1)
    assert ws.sheet_properties.pageSetUpPr.fitToPage and ws.print_title_rows == "$1:$2"
    assert setup.firstPageNumber in (None, 1) and setup.useFirstPageNumber  # OOXML: 1
    assert ws.oddFooter.center.text == "Summary, page 1 of 1"


def test_parcels_sheet_has_flag_and_distance(tmp_path):
    path = tmp_path / "summary.xlsx"
    workbook.write_workbook(path, summary(), detail=DetailTable(FIELDS, 4, iter(ROWS)))
    ws = openpyxl.load_workbook(path)["Parcels"]
    assert [c.value for c in ws[1]] == ["Parcel ID", "District", "Assessed value",
                                        "Near a park\n(≤ 800 m)",
                                        "Distance to nearest park (m)"]
    assert [[c.value for c in row] for row in ws.iter_rows(min_row=2)] == [
        [1, "North", 100, "Yes", 0], [2, "North", 200, "Yes", 799.5],
        [3, "South", None, "No", 1200.25], [4, "South", 500, "No", None]]
    assert ws.freeze_panes == "A2" and ws.auto_filter.ref == "A1:E5"
    assert ws["E3"].number_format == "#,##0.0" and ws["C2"].number_format == "$#,##0"
    # Printed: portrait, one page wide, the header row on every page, numbered from 1.
    setup = ws.page_setup
    assert (setup.orientation, setup.paperSize, *fit(ws)) == ("portrait", 1, 1, 0)
    assert ws.sheet_properties.pageSetUpPr.fitToPage and ws.print_title_rows == "$1:$1"
    assert setup.firstPageNumber in (None, 1) and setup.useFirstPageNumber  # OOXML: 1
    assert ws.oddFooter.center.text == "Parcels, page &P"
    assert ws.oddHeader.left.text == "&BParcels and their distance to the nearest park (4 parcels)"


def test_paper_and_value_format_come_from_settings(tmp_path):
    path = tmp_path / "summary.xlsx"
    workbook.write_workbook(path, summary(), detail=DetailTable(FIELDS, 4, iter(ROWS)),
                            paper="a4", value_format="#,##0 €")
    book = openpyxl.load_workbook(path)
    assert [book[s].page_setup.paperSize for s in ("Summary", "Parcels")] == [9, 9]
    assert book["Summary"]["F3"].number_format == "#,##0 €"
    assert book["Parcels"]["C2"].number_format == "#,##0 €"


def test_a_summary_too_long_for_one_page_numbers_its_pages(tmp_path):
    groups = [GroupStats(None, "all", Stats(45, 45, 45.0, 1.0, 1.0))] + [
        GroupStats(f"D{i:02}", "all", Stats(1, 1, 1.0, 1.0, 1.0)) for i in range(45)]
    many = assemble(groups, walk_distance_m=800, value_field="v", district_field="district")
    path = tmp_path / "summary.xlsx"
    workbook.write_workbook(path, many, detail=None, detail_path="x.csv")
    ws = openpyxl.load_workbook(path)["Summary"]
    assert fit(ws) == (1, 0)
    assert ws.oddFooter.center.text == "Summary, page &P"


def test_past_the_cap_the_workbook_says_where_the_parcels_are(tmp_path):
    path = tmp_path / "summary.xlsx"
    csv = tmp_path / "summary_parcels.csv"
    assert workbook.write_workbook(path, summary(), detail=None, detail_path=csv,
                                   detail_row_cap=3) == ["Summary"]
    ws = openpyxl.load_workbook(path)["Summary"]
    assert ws.cell(10, 1).value == (
        "Every parcel (4, more than this workbook's cap of 3 rows) with its near flag and "
        f"distance to the nearest park: summary_parcels.csv beside this workbook ({csv}).")


def test_a_workbook_held_open_is_a_clear_error_and_the_old_one_stays(tmp_path, monkeypatch):
    path = tmp_path / "summary.xlsx"
    path.write_bytes(b"yesterday's workbook")

    def locked(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", locked)
    with pytest.raises(OutputError) as err:
        workbook.write_workbook(path, summary(), detail=None, detail_path="x.csv")
    assert str(err.value) == (f"{path}: cannot replace the workbook (is it open in Excel?); "
                              "close it and re-run")
    assert path.read_bytes() == b"yesterday's workbook"
    assert [p.name for p in Path(tmp_path).iterdir()] == ["summary.xlsx"]


def test_humanize():
    assert workbook.humanize("parcel_id") == "Parcel ID"
    assert workbook.humanize("APN") == "APN"
    assert workbook.humanize("assessed_value") == "Assessed value"
