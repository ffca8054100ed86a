"""finfed's exceptions: each names the file, key or site at fault and what was expected."""


class FinfedError(Exception):
    """Base class of every error finfed raises on purpose.

    ``public_reason``: where the full message may hold a site's records (a label, a text, an
    answer, a file path), a record-free summary of the same problem that a site may send to the
    coordinator (see ``finfed/privacy/disclosure.py``); the full message stays in the site's log.
    """

    public_reason: str | None = None  # a subclass may set one for all its instances

    def __init__(self, message: str = "", *, public_reason: str | None = None) -> None:
        super().__init__(message)
        if public_reason is not None:
            self.public_reason = public_reason

    def __reduce__(self):  # keep public_reason across pickling (Ray, multiprocessing)
        return _rebuild, (type(self), str(self), self.public_reason)


def _rebuild(kind: type, message: str, public_reason: str | None) -> FinfedError:
    return kind(message, public_reason=public_reason)


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

    category = "interrupted"  # what the coordinator is told (finfed.privacy.disclosure)
    public_reason = "the run was asked to stop; the round was abandoned and nothing was spent or sent"
