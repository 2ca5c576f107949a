"""The sales pipeline: its stages, in order, with a default probability and won/lost flags.

Reading the stages needs a read rule on opportunities (or the right to manage the pipeline);
changing them is an administrator's (object-level `pipeline` manage). Every change is audited.

Rules a stage keeps (each failure names its field):
- id: 1-40 characters of a-z, 0-9, `_` and `-` (it is what opportunities and their history
  refer to, so it never changes);
- name: 1-100 characters; position: 0-100000 and not shared with another stage (the order of
  the pipeline must be unambiguous);
- probability: 0-100; a won stage is 100 and a lost one 0 (a closed deal is certain), and no
  stage is both won and lost;
- a stage that opportunities stand in keeps its won/lost flags (their closing dates would lie
  otherwise) and cannot be deleted (CONFLICT).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from schema.context import RequestContext
from schema.ops import validation
from security.authz import MANAGE, READ
from security.errors import BadUserInput, Conflict, Forbidden, NotFound
from storage.crm_models import Opportunity, PipelineStage

OBJECT = "pipeline"
_STAGE_ID = re.compile(r"^[a-z0-9_-]{1,40}$")
MAX_POSITION = 100_000


@dataclass(frozen=True)
class StageInput:
    id: str
    name: str
    position: int
    probability: int
    is_won: bool = False
    is_lost: bool = False


def stage_id(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _STAGE_ID.match(value):
        raise BadUserInput(f"{field} must be 1-40 characters of a-z, 0-9, '_' and '-'",
                           field=field)
    return value


def _integer(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadUserInput(f"{field} must be a whole number from {low} to {high}", field=field)
    return value


def probability(field: str, value: Any) -> int:
    return _integer(field, value, 0, 100)


def may_read_stages(ctx: RequestContext) -> bool:
    return bool(ctx.guard.scopes("opportunity", READ)) or ctx.guard.permits(OBJECT, MANAGE)


def list_stages(ctx: RequestContext) -> list[PipelineStage]:
    """The stages in pipeline order, for anyone who may read opportunities."""
    if not may_read_stages(ctx):
        reason = (f"no record rule grants read on opportunity to "
                  f"{', '.join(ctx.principal.roles) or 'no role'}")
        ctx.guard.refuse(OBJECT, (), ("@read",), reason)
        raise Forbidden(reason)
    return ordered_stages(ctx)


def ordered_stages(ctx: RequestContext) -> list[PipelineStage]:
    return list(ctx.session.scalars(
        select(PipelineStage).order_by(PipelineStage.position, PipelineStage.id)))


def get_stage(ctx: RequestContext, value: Any, field: str = "stageId") -> PipelineStage:
    """The stage an input names, or BAD_USER_INPUT naming the field."""
    found = ctx.session.get(PipelineStage, stage_id(field, value))
    if found is None:
        raise BadUserInput(f"{field} {value} is not a pipeline stage", field=field)
    return found


def first_open_stage(ctx: RequestContext) -> PipelineStage | None:
    return ctx.session.scalars(
        select(PipelineStage).where(PipelineStage.is_won.is_(False),
                                    PipelineStage.is_lost.is_(False))
        .order_by(PipelineStage.position, PipelineStage.id).limit(1)).first()


def _in_use(ctx: RequestContext, stage: str) -> int:
    return int(ctx.session.scalar(select(func.count()).select_from(Opportunity)
                                  .where(Opportunity.stage_id == stage)) or 0)


def _clean(data: StageInput) -> StageInput:
    name = validation.text("name", data.name, max_length=100, required=True)
    cleaned = StageInput(
        id=stage_id("id", data.id), name=name or "",
        position=_integer("position", data.position, 0, MAX_POSITION),
        probability=probability("probability", data.probability),
        is_won=bool(data.is_won), is_lost=bool(data.is_lost))
    if cleaned.is_won and cleaned.is_lost:
        raise BadUserInput("a stage cannot be both won and lost", field="isLost")
    if cleaned.is_won and cleaned.probability != 100:
        raise BadUserInput("a won stage has probability 100", field="probability")
    if cleaned.is_lost and cleaned.probability != 0:
        raise BadUserInput("a lost stage has probability 0", field="probability")
    return cleaned


def upsert_stage(ctx: RequestContext, data: StageInput) -> PipelineStage:
    """Create the stage `data.id`, or change it. Administrators only; audited."""
    ctx.guard.require(OBJECT, MANAGE)
    values = _clean(data)
    clash = ctx.session.scalars(select(PipelineStage).where(
        PipelineStage.position == values.position, PipelineStage.id != values.id)).first()
    if clash is not None:
        raise BadUserInput(f"position {values.position} is taken by stage {clash.id}",
                           field="position")
    stage = ctx.session.get(PipelineStage, values.id)
    creating = stage is None
    if stage is None:
        stage = PipelineStage(id=values.id)
        ctx.session.add(stage)
    elif (stage.is_won, stage.is_lost) != (values.is_won, values.is_lost):
        used = _in_use(ctx, stage.id)
        if used:
            raise Conflict(f"stage {stage.id} holds {used} opportunit{'y' if used == 1 else 'ies'}"
                           "; its won/lost flags cannot change while it does", field="isWon")
    changed = [name for name in ("name", "position", "probability", "is_won", "is_lost")
               if creating or getattr(stage, name) != getattr(values, name)]
    for name in ("name", "position", "probability", "is_won", "is_lost"):
        setattr(stage, name, getattr(values, name))
    ctx.session.flush()
    ctx.audit("pipeline.stage_create" if creating else "pipeline.stage_update",
              object_type=OBJECT, object_ids=[stage.id], fields=changed)
    return stage


def delete_stage(ctx: RequestContext, value: Any) -> str:
    """Remove a stage no opportunity stands in. Administrators only; audited."""
    ctx.guard.require(OBJECT, MANAGE)
    stage = ctx.session.get(PipelineStage, stage_id("id", value))
    if stage is None:
        raise NotFound(f"pipeline stage {value} not found")
    used = _in_use(ctx, stage.id)
    if used:
        raise Conflict(f"stage {stage.id} holds {used} opportunit{'y' if used == 1 else 'ies'};"
                       " move them to another stage first", field="id")
    ctx.session.delete(stage)
    ctx.session.flush()
    ctx.audit("pipeline.stage_delete", object_type=OBJECT, object_ids=[stage.id])
    return stage.id
