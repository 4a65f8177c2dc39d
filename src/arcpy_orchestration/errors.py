"""The pipeline's one error base. Each message says what is wrong and what to do next."""


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """config/config.yml (or PROJECT_ENV) is not usable."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        super().__init__(message)
        self.path = path
        self.key = key
