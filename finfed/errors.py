"""finfed's exceptions: each names the file, key or site at fault and what was expected."""


class FinfedError(Exception):
    """Base class of every error finfed raises on purpose."""


class ConfigError(FinfedError, ValueError):
    """An experiment setting is unknown, mistyped or out of range."""


class DataError(FinfedError, ValueError):
    """A dataset is missing, malformed or too small for the requested training."""


class PrivacyError(FinfedError, RuntimeError):
    """A privacy guard tripped: training would be silently non-private or unaccounted."""


class LedgerIntegrityError(PrivacyError):
    """A site's privacy ledger or its chain head is unreadable, edited, truncated or deleted.

    The message names the file and the fault, for the site; ``public_reason`` says the same
    without the site's paths, for anything that leaves the site.
    """

    public_reason = "the site's privacy ledger failed its integrity check; the site refuses to train"


class BudgetExhausted(PrivacyError):
    """A site refuses a round that would take it past its own privacy budget."""


class TrainingError(FinfedError, RuntimeError):
    """Local training did not do what it must (for example, the adapter did not change)."""


class RunError(FinfedError, RuntimeError):
    """A federated run failed or its outputs are incomplete."""


class RunInterrupted(FinfedError, RuntimeError):
    """The run was asked to stop (``RUN/.stop``, a signal): the work in progress is abandoned, nothing sent."""
