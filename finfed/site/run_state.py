"""What a site keeps in Flower's ``Context.state`` between the rounds of one run: its accountant's state.

The state itself is the privacy flow's (``SiteBudget.state()``, Opacus' state_dict as flat values);
this module only stores and finds it. A new Flower run (a resumed one included) starts empty.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Context

from finfed import constants as keys


def stored_accountant_state(context: Context) -> dict[str, Any] | None:
    """The accountant state the site kept after its last round of this run, or None before its first."""
    stored = context.state.config_records.get(keys.ACCOUNTANT_STATE)
    return dict(stored) if stored else None


def keep_accountant_state(context: Context, state: dict[str, Any] | None) -> None:
    """Keep the state for the next round (nothing without DP)."""
    if state is not None:
        context.state[keys.ACCOUNTANT_STATE] = ConfigRecord(state)
