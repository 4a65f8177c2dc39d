"""The pipeline's one error base. Each message says what is wrong and what to do next."""


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """config/config.yml (or PROJECT_ENV) is not usable."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        super().__init__(message)
        self.path = path
        self.key = key


class BackendUnavailableError(PipelineError):
    """The configured GIS backend (or the stack it needs) does not import here."""


class InputError(PipelineError):
    """An input dataset or a setting the pipeline cannot work with; nothing was written."""


class DatasetNotFoundError(InputError):
    def __init__(self, message: str, *, dataset: str, available: list[str] | None = None):
        super().__init__(message)
        self.dataset = dataset
        self.available = available or []


class FieldNotFoundError(InputError):
    def __init__(self, message: str, *, dataset: str, field: str, available: list[str]):
        super().__init__(message)
        self.dataset = dataset
        self.field = field
        self.available = available


class WorkingCrsError(InputError):
    def __init__(self, message: str, *, wkid: int):
        super().__init__(message)
        self.wkid = wkid


class DistanceError(InputError):
    def __init__(self, message: str, *, distance: float):
        super().__init__(message)
        self.distance = distance


class OutputError(PipelineError):
    """An output could not be written (folder not writable, workbook open in Excel, ...)."""
