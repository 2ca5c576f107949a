"""The CRM configuration a new appliance starts with: the sales pipeline and the SLA policies.

Seeded once by `enclave init` (a setting records that it was), so an administrator's later
changes stand, and a restore brings the restored appliance's own configuration along.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from storage.crm_models import PipelineStage, SlaPolicy
from storage.models import Setting

SEEDED_KEY = "crm_defaults_seeded"

DEFAULT_STAGES = (
    # id, name, position, probability, won, lost
    ("prospecting", "Prospecting", 10, 10, False, False),
    ("qualification", "Qualification", 20, 25, False, False),
    ("proposal", "Proposal", 30, 50, False, False),
    ("negotiation", "Negotiation", 40, 75, False, False),
    ("won", "Closed won", 50, 100, True, False),
    ("lost", "Closed lost", 60, 0, False, True),
)
DEFAULT_SLAS = (
    # priority, first response, resolution (minutes)
    ("urgent", 60, 8 * 60),
    ("high", 4 * 60, 24 * 60),
    ("normal", 8 * 60, 3 * 24 * 60),
    ("low", 24 * 60, 7 * 24 * 60),
)


def seed_crm_defaults(session: Session) -> bool:
    """Add the default pipeline and SLA policies once; True when it did."""
    if session.get(Setting, SEEDED_KEY) is not None:
        return False
    for stage_id, name, position, probability, won, lost in DEFAULT_STAGES:
        if session.get(PipelineStage, stage_id) is None:
            session.add(PipelineStage(id=stage_id, name=name, position=position,
                                      probability=probability, is_won=won, is_lost=lost))
    for priority, response, resolution in DEFAULT_SLAS:
        if session.get(SlaPolicy, priority) is None:
            session.add(SlaPolicy(priority=priority, first_response_minutes=response,
                                  resolution_minutes=resolution))
    session.add(Setting(key=SEEDED_KEY, value="1"))
    session.flush()
    return True
