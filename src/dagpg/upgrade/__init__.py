"""Safe upgrades of a Dagster instance: `dagpg upgrade --rehearse|--apply|--rollback` and
`dagpg db move` (a new PostgreSQL server). The library API, for the CLI and notebooks alike:
"""

from dagpg.upgrade.apply import ApplyReport, RollbackReport, apply_upgrade, rollback_upgrade
from dagpg.upgrade.rehearse import RehearsalReport, rehearse_upgrade

__all__ = ["ApplyReport", "RehearsalReport", "RollbackReport", "apply_upgrade",
           "rehearse_upgrade", "rollback_upgrade"]
