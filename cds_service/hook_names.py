"""The CDS Hooks this service answers, by name: the one place the names are spelt (no imports, so the command
line can offer them without loading the service)."""

from __future__ import annotations

ORDER_SELECT, ORDER_SIGN, PATIENT_VIEW = "order-select", "order-sign", "patient-view"
HOOKS = (ORDER_SELECT, ORDER_SIGN, PATIENT_VIEW)
"""Every hook a service answers, in the order tools offer them."""
HOOKS_WITH_DRAFTS = frozenset({ORDER_SELECT, ORDER_SIGN})
"""Hooks whose context carries draft orders; at patient-view the chart is opened and nothing is drafted."""


def opens_chart(hook: object) -> bool:
    """The hook of a chart being opened (patient-view), not of an order being drafted."""
    return hook == PATIENT_VIEW
