"""finfed's exceptions: each names the file, key or site at fault and what was expected."""


class FinfedError(Exception):
    """Base class of every error finfed raises on purpose."""


class ConfigError(FinfedError, ValueError):
    """An experiment setting is unknown, mistyped or out of range."""


class DataError(FinfedError, ValueError):
    """A dataset is missing, malformed or too small for the requested training."""


class PrivacyError(FinfedError, RuntimeError):
    """A privacy guard tripped: training would be silently non-private or unaccounted."""


class BudgetExhausted(PrivacyError):
    """A site refuses a round that would take it past its own privacy budget."""


class TrainingError(FinfedError, RuntimeError):
    """Local training did not do what it must (for example, the adapter did not change)."""


class RunError(FinfedError, RuntimeError):
    """A federated run failed or its outputs are incomplete."""


class RunInterrupted(FinfedError, RuntimeError):
    """The run was asked to stop (``RUN/.stop``, a signal): the work in progress is abandoned, nothing sent."""
