"""Exact planar distance from every parcel to its nearest park, fast enough for a million parcels.

Plain `STRtree.query(predicate="dwithin")` tests every parcel against every park whose envelope
is within the walk distance: in a city with clustered parks that is ~13 pairs per parcel. Here
the tree only proposes candidates; per parcel the candidate with the nearest envelope is tested
first (an exact distance, and an upper bound), then only candidates whose envelope is nearer than
that bound. A parcel whose nearest candidate is farther than the radius is searched again out
to that distance (or twice as far when it had no candidate), so the result is the exact nearest
distance for every parcel, and "near" (distance <= radius) is what `dwithin` decides.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import shapely

CHUNK = 100_000  # parcels per task: bounds the candidate-pair arrays to tens of MB
# shapely and numpy release the GIL in the heavy calls, so chunks run in threads.
THREADS = max(1, min(2, os.cpu_count() or 1))


def nearest_distance(geoms: np.ndarray, targets: np.ndarray, radius: float,
                     *, chunk: int = CHUNK, threads: int = THREADS) -> np.ndarray:
    """Distance from each geometry to the nearest target (NaN for empty geometries or no
    targets). `radius` is the first search radius; pass the walk distance."""
    geoms, targets = np.asarray(geoms, dtype=object), np.asarray(targets, dtype=object)
    out = np.full(len(geoms), np.nan)
    targets = targets[~(shapely.is_missing(targets) | shapely.is_empty(targets))]
    if len(geoms) == 0 or len(targets) == 0:
        return out
    gbounds = shapely.bounds(geoms)
    tbounds = shapely.bounds(targets)
    usable = np.flatnonzero(~np.isnan(gbounds).any(axis=1))
    if len(usable) == 0:
        return out
    lo = np.minimum(gbounds[usable, :2].min(axis=0), tbounds[:, :2].min(axis=0))
    hi = np.maximum(gbounds[usable, 2:].max(axis=0), tbounds[:, 2:].max(axis=0))
    # At this radius every target is a candidate (with slack for rounding).
    max_radius = float(np.hypot(*(hi - lo))) * (1 + 1e-9) + 1e-9
    radius = max(float(radius), max_radius * 1e-9, 1e-9)
    tree = shapely.STRtree(targets)
    # Targets' envelopes grown by the first radius: the first pass queries it with the
    # geometries themselves, sparing a million query boxes.
    grown = shapely.STRtree(shapely.box(tbounds[:, 0] - radius, tbounds[:, 1] - radius,
                                        tbounds[:, 2] + radius, tbounds[:, 3] + radius))
    for t in (tree, grown):
        t.query(targets[:1])  # built before the threads share them
    tcols = tuple(np.ascontiguousarray(tbounds[:, k]) for k in range(4))

    def run(idx: np.ndarray) -> None:
        out[idx] = _nearest(geoms[idx], gbounds[idx], targets, tcols, tree, grown, radius,
                            max_radius)

    chunks = [usable[i:i + chunk] for i in range(0, len(usable), chunk)]
    if threads > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, chunks))
    else:
        for idx in chunks:
            run(idx)
    return out


def _nearest(geoms, gbounds, targets, tcols, tree, grown, radius, max_radius):
    gcols = tuple(np.ascontiguousarray(gbounds[:, k]) for k in range(4))
    best = np.full(len(geoms), np.inf)
    todo = np.arange(len(geoms))
    r = np.full(len(geoms), float(radius))  # each geometry's current search radius
    first_pass = True
    while len(todo):
        rt = r[todo]
        if first_pass:
            qi, kj = grown.query(geoms)
        else:
            b = gbounds[todo]
            qi, kj = tree.query(shapely.box(b[:, 0] - rt, b[:, 1] - rt, b[:, 2] + rt,
                                            b[:, 3] + rt))
        first_pass = False
        gi = todo[qi]  # positions in this chunk
        ed2 = _envelope_distance2(gcols, gi, tcols, kj)
        keep = ed2 <= rt[qi] ** 2
        qi, gi, kj, ed2 = qi[keep], gi[keep], kj[keep], ed2[keep]
        if len(qi):
            first = _argmin_per_group(qi, ed2)
            pos = gi[first]
            best[pos] = np.minimum(best[pos], shapely.distance(geoms[pos], targets[kj[first]]))
            rest = np.ones(len(qi), dtype=bool)
            rest[first] = False
            rest &= ed2 < best[gi] ** 2
            if rest.any():
                pos = gi[rest]
                np.minimum.at(best, pos, shapely.distance(geoms[pos], targets[kj[rest]]))
        # Settled: best <= r, since every target not tested has an envelope farther than r.
        # Otherwise search again out to the best distance found, or twice as far if none was.
        open_ = (best[todo] > rt) & (rt < max_radius)
        todo = todo[open_]
        r[todo] = np.where(np.isfinite(best[todo]), best[todo], 2 * r[todo])
    return best


def _envelope_distance2(gcols, gi, tcols, kj) -> np.ndarray:
    """Squared distance between bounding boxes (a lower bound of the geometries' distance)."""
    gx0, gy0, gx1, gy1 = (c[gi] for c in gcols)
    tx0, ty0, tx1, ty1 = (c[kj] for c in tcols)
    dx = np.maximum(np.maximum(gx0 - tx1, tx0 - gx1), 0.0)
    dy = np.maximum(np.maximum(gy0 - ty1, ty0 - gy1), 0.0)
    return dx * dx + dy * dy


def _argmin_per_group(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the smallest value in each run of equal `groups` (which the tree returns sorted)."""
    if len(groups) > 1 and not (groups[1:] >= groups[:-1]).all():
        order = np.argsort(groups, kind="stable")
        return order[_argmin_per_group(groups[order], values[order])]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lowest = np.repeat(np.minimum.reduceat(values, starts), np.diff(np.r_[starts, len(groups)]))
    hits = np.flatnonzero(values == lowest)
    return hits[np.r_[True, groups[hits[1:]] != groups[hits[:-1]]]]
