"""dagpg: the operations kit for a PostgreSQL-backed Dagster instance.

Library modules raise DagpgError subclasses and never print or exit; the CLI (dagpg.cli)
renders results and errors.
"""

__version__ = "0.1.0"
