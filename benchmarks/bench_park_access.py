"""Benchmark the park-access pipeline on a synthetic city (default 1M parcels x 5k parks).

    flock /tmp/dagpg-bench.lock .venv/bin/python benchmarks/bench_park_access.py
    .venv/bin/python benchmarks/bench_park_access.py --parcels 100000 --parks 500   # quick look

1. The sample city is generated once into data/bench/ (git-ignored) and reused.
2. End to end, in a child process (so its peak RSS is its own): read the .gdb, project, repair,
   select, summarize, write the workbook and the parcel-level CSV; the four steps exactly as the
   assets call them, open-source backend. Targets: <= 20 s wall, <= 2.5 GB peak RSS.
3. The selection step alone, on the projected layers step 2 wrote: the pipeline's exact search
   (proximity.nearest_distance: near flag and distance), plain STRtree dwithin, and the naive
   method (buffer the parks, union, intersects), as usually written and with the union
   prepared. Target: naive / exact >= 20x. The exact method
   must select a superset of the naive one: a buffer's straight segments cut inside the true
   circle, so the naive method misses parcels just short of the distance.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR / "src"))


def city_folder(args) -> Path:
    spread = "" if args.parks_per_cluster == sample_data_default() else \
        f"_c{args.parks_per_cluster}"
    return PROJECT_DIR / "data" / "bench" / f"city_{args.parcels}_{args.parks}{spread}"


def sample_data_default() -> int:
    from arcpy_orchestration import sample_data

    return sample_data.PARKS_PER_CLUSTER


def settings_for(args):
    from arcpy_orchestration import park_access

    folder = city_folder(args)
    return park_access.Settings(
        parks_fc=str(folder / "city.gdb" / "parks"),
        parcels_fc=str(folder / "city.gdb" / "parcels"),
        working_wkid=26910, walk_distance_m=args.distance,
        workspace=str(folder / "work"),
        output_summary_path=str(folder / "reports" / "park_access_summary.xlsx"),
        detail_row_cap=100_000, backend="open_source",
    )


def end_to_end(args) -> dict:
    """Runs in the child: the four steps, each timed."""
    t0 = time.perf_counter()
    from arcpy_orchestration import park_access

    s = settings_for(args)
    times = {"import": time.perf_counter() - t0}
    t = time.perf_counter()
    projected = park_access.project_inputs(s)
    times["project_inputs"] = time.perf_counter() - t
    t = time.perf_counter()
    selection = park_access.parcels_near_parks(s, projected.parks.path, projected.parcels.path)
    times["parcels_near_parks"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = park_access.parcel_summary(s, selection.path)
    times["parcel_summary"] = time.perf_counter() - t
    t = time.perf_counter()
    book = park_access.summary_excel(s, summary.path, selection.path)
    times["summary_excel"] = time.perf_counter() - t
    return {"times": times, "near": selection.near, "parcels": selection.parcels,
            "repaired_parks": projected.parks.repaired, "workbook": book.path,
            "parcel_table": book.detail_path,
            "parks_projected": projected.parks.path, "parcels_projected": projected.parcels.path}


def selection_methods(args, parks_path: str, parcels_path: str) -> dict:
    import numpy as np
    import shapely

    from arcpy_orchestration.gis import proximity
    from arcpy_orchestration.gis.open_source import read

    parks = np.asarray(read(parks_path).geometry.values)
    parcels = np.asarray(read(parcels_path).geometry.values)
    d = args.distance
    out = {}

    t = time.perf_counter()
    dist = proximity.nearest_distance(parcels, parks, d)
    exact = dist <= d
    out["exact_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tree = shapely.STRtree(parks)
    hit = np.zeros(len(parcels), dtype=bool)
    hit[tree.query(parcels, predicate="dwithin", distance=d)[0]] = True
    out["dwithin_s"] = time.perf_counter() - t
    out["dwithin_equals_exact"] = bool((hit == exact).all())

    if not args.skip_naive:
        # As usually written (geopandas: parcels.intersects(parks.buffer(d).union_all())): the
        # union is not prepared, so every parcel is tested against all of it.
        t = time.perf_counter()
        zone = shapely.union_all(shapely.buffer(parks, d))
        naive = shapely.intersects(parcels, zone)
        out["naive_s"] = time.perf_counter() - t
        out["zone_parts"] = int(shapely.get_num_geometries(zone))
        out["zone_vertices"] = int(shapely.get_num_coordinates(zone))
        # The same with the union prepared (indexed): same answer, far faster.
        t = time.perf_counter()
        zone = shapely.union_all(shapely.buffer(parks, d))
        shapely.prepare(zone)
        prepared = shapely.intersects(zone, parcels)
        out["naive_prepared_s"] = time.perf_counter() - t
        out["prepared_equals_naive"] = bool((prepared == naive).all())
        out["naive_near"] = int(naive.sum())
        out["naive_not_in_exact"] = int((naive & ~exact).sum())
        missed = exact & ~naive
        out["exact_not_in_naive"] = int(missed.sum())
        if missed.any():
            out["missed_distance_range_m"] = [float(dist[missed].min()), float(dist[missed].max())]
    out["exact_near"] = int(exact.sum())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parcels", type=int, default=1_000_000)
    parser.add_argument("--parks", type=int, default=5_000)
    parser.add_argument("--distance", type=float, default=800.0)
    parser.add_argument("--parks-per-cluster", type=int, default=sample_data_default(),
                        help="1 scatters the parks evenly (default: clusters of 40)")
    parser.add_argument("--skip-naive", action="store_true", help="the naive method takes minutes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(end_to_end(args)))
        return 0

    from arcpy_orchestration import sample_data

    folder = city_folder(args)
    if not (folder / "city.gdb").exists():
        t = time.perf_counter()
        sample_data.generate(folder, parcels=args.parcels, parks=args.parks, formats=("gdb",),
                             parks_per_cluster=args.parks_per_cluster)
        print(f"generated {args.parcels:,} parcels x {args.parks:,} parks in "
              f"{time.perf_counter() - t:.1f} s -> {folder}")

    print("load average before: {:.2f} {:.2f} {:.2f} (other work on the machine slows this)"
          .format(*os.getloadavg()))
    argv = [sys.executable, __file__, "--child", f"--parcels={args.parcels}",
            f"--parks={args.parks}", f"--distance={args.distance}",
            f"--parks-per-cluster={args.parks_per_cluster}"]
    t = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t
    result = json.loads(child.stdout.read().splitlines()[-1])
    if os.waitstatus_to_exitcode(status) != 0:
        print("end-to-end run failed")
        return 1
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    print(f"\nend to end ({args.parcels:,} parcels, {args.parks:,} parks, {os.cpu_count()} cores):"
          f" {wall:.1f} s wall (target 20), peak RSS {peak_gb:.2f} GB (target 2.5)")
    for step, seconds in result["times"].items():
        print(f"  {step:<20} {seconds:6.1f} s")
    print(f"  near: {result['near']:,} of {result['parcels']:,}; repaired parks: "
          f"{result['repaired_parks']}")
    print(f"  workbook: {result['workbook']}\n  parcel table: {result['parcel_table']}")

    sel = selection_methods(args, result["parks_projected"], result["parcels_projected"])
    print(f"\nselection step ({args.distance:g} m):")
    print(f"  exact (STRtree candidates, nearest distance) {sel['exact_s']:7.1f} s  "
          f"near {sel['exact_near']:,}")
    print(f"  plain STRtree dwithin                       {sel['dwithin_s']:7.1f} s  "
          f"same flags: {sel['dwithin_equals_exact']}")
    if "naive_s" in sel:
        print(f"  naive (buffer, union, intersects)           {sel['naive_s']:7.1f} s  "
              f"near {sel['naive_near']:,} (union: {sel['zone_parts']:,} parts, "
              f"{sel['zone_vertices']:,} vertices)")
        print(f"  naive with the union prepared               {sel['naive_prepared_s']:7.1f} s  "
              f"same flags as naive: {sel['prepared_equals_naive']}")
        print(f"  naive / exact: {sel['naive_s'] / sel['exact_s']:.1f}x (target >= 20x); "
              f"naive / dwithin: {sel['naive_s'] / sel['dwithin_s']:.1f}x; "
              f"prepared naive / exact: {sel['naive_prepared_s'] / sel['exact_s']:.2f}x")
        superset = sel["naive_not_in_exact"] == 0
        print(f"  exact selects a superset of naive: {superset} "
              f"({sel['exact_not_in_naive']} parcels only exact selects"
              + (", {:.3f}-{:.3f} m away)".format(*sel["missed_distance_range_m"])
                 if "missed_distance_range_m" in sel else ")"))
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
