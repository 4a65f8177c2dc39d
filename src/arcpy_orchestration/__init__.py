"""The park-access pipeline: business logic with no Dagster imports.

Module loggers propagate to the root logger, so a Dagster run captures their records.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
__version__ = "0.1.0"
