"""Version counters kept in the settings table (policy version, key version).

Other processes compare them on every request to know when to reload what they cached.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from storage.models import Setting


def read_counter(session: Session, key: str) -> int:
    setting = session.get(Setting, key)
    return int(setting.value) if setting else 0


def bump_counter(session: Session, key: str) -> int:
    """Add one, under a row lock so concurrent bumps do not collide; returns the new value."""
    setting = session.get(Setting, key, with_for_update=True)
    if setting is None:
        setting = Setting(key=key, value="0")
        session.add(setting)
    setting.value = str(int(setting.value) + 1)
    return int(setting.value)
