"""The code location of benchmarks/bench_prune.py: five assets that log like a GIS pipeline's
steps, and an asset check. One real run of them is replicated into the benchmark's history."""

import dagster as dg

MESSAGES_PER_ASSET = 95


def _asset(name: str, deps: list[str]):
    @dg.asset(name=name, deps=deps)
    def _compute(context) -> dg.MaterializeResult:
        for i in range(MESSAGES_PER_ASSET):
            context.log.info(f"{name}: processed tile {i} of {MESSAGES_PER_ASSET} (parcels, parks)")
        return dg.MaterializeResult(metadata={"rows": 1000, "tiles": MESSAGES_PER_ASSET})
    return _compute


@dg.asset_check(asset="bench_summary")
def summary_has_rows() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True, metadata={"rows": 1000})


ASSETS = [_asset("bench_inputs", []), _asset("bench_parks", ["bench_inputs"]),
          _asset("bench_parcels", ["bench_inputs"]),
          _asset("bench_near", ["bench_parks", "bench_parcels"]),
          _asset("bench_summary", ["bench_near"]), summary_has_rows]

defs = dg.Definitions(assets=ASSETS[:-1], asset_checks=[summary_has_rows])
