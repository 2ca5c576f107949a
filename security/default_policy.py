"""The built-in roles and their default grants, seeded by `enclave init`.

admin            manages clients, people's accounts, roles, policies and keys; reads no
                 personal field
security_officer reads the audit log and the policies; no personal field
auditor          reads the audit log and the policies (read-only, like security_officer); no
                 personal field
sales_manager    every account and contact of their team, every field, read and write
sales_rep        records they own (read/write) and their team's (read); never national id or
                 birth date (restricted class)
support_agent    contacts' name, email, phone and account, read only
integration      nothing until the admin grants it
"""

from __future__ import annotations

from security.authz import MANAGE, READ, WRITE, Rule
from security.classification import FieldClass

ROLES = ("admin", "security_officer", "auditor", "sales_manager", "sales_rep", "support_agent",
         "integration")
#: Roles whose people must pass a TOTP second factor to sign in.
TOTP_REQUIRED_ROLES = frozenset({"admin", "security_officer"})

#: Bumped whenever a release adds default rules; `enclave init` adds the rules of later
#: revisions to an appliance seeded by an earlier one, once (see `rules_added_since`).
DEFAULTS_REVISION = 2

_ALL_CLASSES = [c.policy_name for c in FieldClass]
_UP_TO_CONFIDENTIAL = [c.policy_name for c in
                       (FieldClass.PUBLIC, FieldClass.INTERNAL, FieldClass.CONFIDENTIAL)]


def default_rules() -> list[Rule]:
    rules = [
        Rule("admin", "client", "@all", MANAGE),
        Rule("admin", "policy", "@all", MANAGE),
        Rule("admin", "policy", "@all", READ),
        Rule("admin", "key", "@all", MANAGE),
        Rule("security_officer", "audit", "@all", READ),
        Rule("security_officer", "policy", "@all", READ),
    ]
    rules += _ADDED[2]
    for obj in ("account", "contact"):
        rules += [Rule("sales_manager", obj, cls, act)
                  for cls in _ALL_CLASSES for act in (READ, WRITE)]
        rules += [Rule("sales_manager", obj, "@team", READ), Rule("sales_manager", obj, "@team", WRITE)]
        rules += [Rule("sales_rep", obj, cls, act)
                  for cls in _UP_TO_CONFIDENTIAL for act in (READ, WRITE)]
        rules += [Rule("sales_rep", obj, "@team", READ), Rule("sales_rep", obj, "@own", READ),
                  Rule("sales_rep", obj, "@own", WRITE)]
    rules += [Rule("support_agent", "contact", f, READ)
              for f in ("first_name", "last_name", "email", "phone", "account")]
    rules += [Rule("support_agent", "contact", "@all", READ),
              Rule("support_agent", "account", "name", READ),
              Rule("support_agent", "account", "@all", READ)]
    return rules


# Rules that releases added after the first one, by defaults revision.
_ADDED: dict[int, list[Rule]] = {
    2: [Rule("admin", "user", "@all", MANAGE),
        Rule("auditor", "audit", "@all", READ),
        Rule("auditor", "policy", "@all", READ)],
}


def rules_added_since(revision: int) -> list[Rule]:
    """The default rules introduced after defaults revision `revision`."""
    return [rule for number in sorted(_ADDED) if number > revision for rule in _ADDED[number]]
