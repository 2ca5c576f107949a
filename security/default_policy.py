"""The built-in roles and their default grants, seeded by `enclave init`.

admin            manages clients, people's accounts, roles, policies and keys; reads no
                 personal field
security_officer reads the audit log and the policies; no personal field
auditor          reads the audit log and the policies (read-only, like security_officer); no
                 personal field
sales_manager    every account and contact of their team, every field, read and write
sales_rep        records they own (read/write) and their team's (read); never national id or
                 birth date (restricted class)
support_agent    contacts' name, email, phone and account, read only; works every case (read
                 and write, up to confidential) and logs activities on them
marketing        campaigns and their members; contacts' and leads' names, and their email or
                 phone only while the person's marketing consent on that channel is in force;
                 the consent records (without evidence)
privacy_officer  data-subject rights: exports everything held on a person, erases a person;
                 sets retention rules; no personal field otherwise
integration      nothing until the admin grants it

Sales roles get leads, opportunities, activities and consent like accounts and contacts (managers
their team's, every field; reps their own to write and their team's to read, up to
confidential), and read their team's cases.
"""

from __future__ import annotations

from security.authz import MANAGE, READ, READ_CONSENTED, WRITE, Rule
from security.classification import FieldClass

ROLES = ("admin", "security_officer", "auditor", "sales_manager", "sales_rep", "support_agent",
         "marketing", "privacy_officer", "integration")
#: Roles whose people must pass a TOTP second factor to sign in.
TOTP_REQUIRED_ROLES = frozenset({"admin", "security_officer", "privacy_officer"})

#: Bumped whenever a release adds default rules; `enclave init` adds the rules of later
#: revisions to an appliance seeded by an earlier one, once (see `rules_added_since`).
DEFAULTS_REVISION = 3

_ALL_CLASSES = [c.policy_name for c in FieldClass]
_UP_TO_CONFIDENTIAL = [c.policy_name for c in
                       (FieldClass.PUBLIC, FieldClass.INTERNAL, FieldClass.CONFIDENTIAL)]
_UP_TO_INTERNAL = [c.policy_name for c in (FieldClass.PUBLIC, FieldClass.INTERNAL)]
_BOTH = (READ, WRITE)


def _sales_rules(objects: tuple[str, ...]) -> list[Rule]:
    """Managers: their team's records, every field. Reps: their own to write, their team's to
    read, up to confidential."""
    rules: list[Rule] = []
    for obj in objects:
        rules += [Rule("sales_manager", obj, cls, act) for cls in _ALL_CLASSES for act in _BOTH]
        rules += [Rule("sales_manager", obj, "@team", act) for act in _BOTH]
        rules += [Rule("sales_rep", obj, cls, act) for cls in _UP_TO_CONFIDENTIAL for act in _BOTH]
        rules += [Rule("sales_rep", obj, "@team", READ), Rule("sales_rep", obj, "@own", READ),
                  Rule("sales_rep", obj, "@own", WRITE)]
    return rules


def _crm_module_rules() -> list[Rule]:
    rules = [Rule("admin", obj, "@all", MANAGE)
             for obj in ("pipeline", "sla", "custom_field", "webhook", "retention", "document")]
    rules += [Rule("privacy_officer", "subject", "@all", MANAGE),
              Rule("privacy_officer", "retention", "@all", MANAGE)]
    rules += _sales_rules(("lead", "opportunity", "activity", "consent"))
    rules += [Rule("sales_manager", "case", cls, READ) for cls in _ALL_CLASSES]
    rules += [Rule("sales_manager", "case", "@team", READ)]
    for obj in ("case", "activity"):
        rules += [Rule("support_agent", obj, cls, act)
                  for cls in _UP_TO_CONFIDENTIAL for act in _BOTH]
    rules += [Rule("support_agent", "case", "@all", act) for act in _BOTH]
    rules += [Rule("support_agent", "activity", "@all", READ),
              Rule("support_agent", "activity", "@own", WRITE)]
    for obj in ("campaign", "campaign_member"):
        rules += [Rule("marketing", obj, cls, act) for cls in _UP_TO_CONFIDENTIAL for act in _BOTH]
        rules += [Rule("marketing", obj, "@all", act) for act in _BOTH]
    for obj in ("contact", "lead"):
        rules += [Rule("marketing", obj, f, READ) for f in ("first_name", "last_name")]
        rules += [Rule("marketing", obj, f, READ_CONSENTED) for f in ("email", "phone")]
        rules += [Rule("marketing", obj, "@all", READ)]
    rules += [Rule("marketing", "lead", "company", READ)]
    rules += [Rule("marketing", "consent", cls, READ) for cls in _UP_TO_INTERNAL]
    rules += [Rule("marketing", "consent", "@all", READ)]
    return rules


def default_rules() -> list[Rule]:
    rules = [
        Rule("admin", "client", "@all", MANAGE),
        Rule("admin", "policy", "@all", MANAGE),
        Rule("admin", "policy", "@all", READ),
        Rule("admin", "key", "@all", MANAGE),
        Rule("security_officer", "audit", "@all", READ),
        Rule("security_officer", "policy", "@all", READ),
    ]
    for number in sorted(_ADDED):
        rules += _ADDED[number]
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


_ADDED[3] = _crm_module_rules()


def rules_added_since(revision: int) -> list[Rule]:
    """The default rules introduced after defaults revision `revision`."""
    return [rule for number in sorted(_ADDED) if number > revision for rule in _ADDED[number]]
