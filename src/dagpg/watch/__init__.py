"""`dagpg watch`: the keeper. Judges the deployment with `dagpg verify`'s checks on a timer and
acts: restarts a hung daemon or a silent webserver through the service manager
(`dagpg.services`), ends runs whose worker is gone through Dagster's API.

`watch(settings, ...)` runs it; `Keeper` is one keeper and its passes.
"""

from dagpg.watch.keeper import Event, Keeper, PassResult
from dagpg.watch.loop import watch

__all__ = ["Event", "Keeper", "PassResult", "watch"]
