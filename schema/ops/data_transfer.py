"""CSV import and export of accounts, contacts and leads.

Import reads the CSV stream row by row (never the whole file) and creates each row through the
object's own create operation, so a row passes exactly the checks a GraphQL create would (field
validation, write grants, references, custom field types) and is sealed, audited and announced
to webhooks the same way. Each rejected row is reported with its row number (the header is row 1,
as in a spreadsheet), the column and the reason. By default good rows are written, each in its own
savepoint; `all_or_nothing` writes nothing unless every row is good (the rows are still all
checked, so the report is complete).

Headers are the GraphQL input names (`lastName`, `accountId`, ...) plus `custom.<key>` for custom
fields; an empty cell means "not given". Unknown or repeated headers refuse the whole file.

Export writes the columns the caller may read — decided once per field by the guard (masked
fields are exported masked; refused columns are left out and named in the result) — for the
records the caller may see, every value through `guard.reveal` (so the reads are audited, one
entry per object type). A cell the guard refuses for one record (a consent-bound field of a
person who has not consented) is left empty. Both directions are audited with their counts
(`<object>.import`, `<object>.export`).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from schema.context import RequestContext
from schema.names import camel
from schema.ops.custom_values import CustomValue, definitions
from schema.ops.records import list_records, require_create
from security.authz import Decision
from security.classification import OBJECTS
from security.errors import BadUserInput, EnclaveError
from security.guard import FieldForbidden

OBJECT_TYPES = ("account", "contact", "lead")
CUSTOM_PREFIX = "custom."
#: Rejections reported in full; further ones are only counted.
MAX_REPORTED = 1000
MAX_CELL = 20_000
_PAGE = 100


@dataclass(frozen=True)
class Rejection:
    row: int
    field: str | None
    message: str


@dataclass
class ImportResult:
    created: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    rejected_count: int = 0
    #: True when all_or_nothing was asked and a rejection undid every row.
    rolled_back: bool = False


@dataclass(frozen=True)
class ExportResult:
    rows: int
    columns: tuple[str, ...]
    #: Columns left out because the caller may not read them.
    omitted: tuple[str, ...]


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _object_type(value: str) -> str:
    if value not in OBJECT_TYPES:
        raise BadUserInput(f"objectType must be one of {', '.join(OBJECT_TYPES)}",
                           field="objectType")
    return value


# -- import --------------------------------------------------------------------------------------

Creator = Callable[[RequestContext, dict[str, Any], list[CustomValue]], Any]


def _call_create(module: str, function: str) -> Creator:
    """The object's own create operation (imported when first needed: leads live in a module of
    their own). Custom values go where that operation takes them."""
    def create(ctx: RequestContext, data: dict[str, Any], custom: list[CustomValue]) -> Any:
        ops = importlib.import_module(f"schema.ops.{module}")
        fn = getattr(ops, function, None)
        if fn is None:
            raise BadUserInput(f"importing {module} is not available yet")
        if custom:
            return fn(ctx, data, custom=custom)
        return fn(ctx, data)
    return create


_CREATORS: dict[str, Creator] = {
    "account": _call_create("accounts", "create_account"),
    "contact": _call_create("contacts", "create_contact"),
    "lead": _call_create("leads", "create_lead"),
}


def _importable(object_type: str) -> set[str]:
    """The attributes an import may set: the object's built-in fields except those the system
    keeps (owner, team and times are the importer's; conversion links are set by conversion).
    The object's create operation refuses any of these it does not take."""
    skip = {"owner", "team", "created_at", "updated_at", "converted_at", "converted_contact",
            "converted_account", "converted_opportunity"}
    return {f.attr for f in OBJECTS[object_type].fields if f.name not in skip and not f.custom}


def _cell_value(value_type: str, text: str) -> Any:
    if value_type == "boolean":
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        return text  # coerce() refuses it, naming the field
    return text


#: Columns whose GraphQL input is a whole number (CSV cells are text).
_INTEGER_COLUMNS = {("lead", "score")}


def _plain_cell(object_type: str, attribute: str, text: str) -> Any:
    if (object_type, attribute) in _INTEGER_COLUMNS:
        try:
            return int(text.strip())
        except ValueError:
            return text  # the create operation refuses it, naming the field
    return text


def _column_of(exc: EnclaveError, row_fields: dict[str, Any]) -> str | None:
    name = exc.extra.get("field")
    if isinstance(name, str):
        if name.startswith("customFields."):
            return CUSTOM_PREFIX + name.removeprefix("customFields.")
        return name
    fields = exc.extra.get("fields")
    if isinstance(fields, list | tuple) and fields:
        return ", ".join(camel(str(f)) for f in fields)
    return None


def import_csv(ctx: RequestContext, object_type: str, stream: TextIO, *,
               all_or_nothing: bool = False) -> ImportResult:
    object_type = _object_type(object_type)
    require_create(ctx, object_type)
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise BadUserInput("the CSV is empty: it needs a header row", field="csv") from None
    except csv.Error as exc:
        raise BadUserInput(f"row 1: {exc}", field="csv") from None
    columns = _columns(ctx, object_type, header)
    result = ImportResult()
    create = _CREATORS[object_type]
    with ctx.session.begin_nested() as outer:
        for number, cells in _rows(reader):
            if isinstance(cells, Rejection):
                _reject(result, cells)
                continue
            if not any(c.strip() for c in cells):
                continue  # a blank line
            if len(cells) != len(columns):
                _reject(result, Rejection(number, None, f"row has {len(cells)} cells, the "
                                                        f"header {len(columns)}"))
                continue
            data: dict[str, Any] = {}
            custom: list[CustomValue] = []
            for (attribute, value_type), cell in zip(columns, cells, strict=True):
                if cell == "":
                    continue
                if value_type is None:
                    data[attribute] = _plain_cell(object_type, attribute, cell)
                else:
                    custom.append(CustomValue(attribute, _cell_value(value_type, cell)))
            events = len(ctx.events)
            try:
                with ctx.session.begin_nested():
                    create(ctx, data, custom)
            except EnclaveError as exc:
                del ctx.events[events:]  # the row was undone: nothing to announce
                _reject(result, Rejection(number, _column_of(exc, data), exc.message
                                          if exc.public else "the row could not be written"))
                continue
            result.created += 1
        if all_or_nothing and result.rejected_count:
            outer.rollback()
            ctx.events.clear()
            result.rolled_back = True
            result.created = 0
    ctx.audit(f"{object_type}.import", object_type=object_type,
              fields=[f"created:{result.created}", f"rejected:{result.rejected_count}",
                      f"mode:{'all_or_nothing' if all_or_nothing else 'row_by_row'}"],
              decision="deny" if result.rolled_back else "allow",
              reason="a row was rejected, so nothing was written" if result.rolled_back
              else None)
    return result


def _reject(result: ImportResult, rejection: Rejection) -> None:
    result.rejected_count += 1
    if len(result.rejected) < MAX_REPORTED:
        result.rejected.append(rejection)


def _rows(reader: Any) -> Iterator[tuple[int, list[str] | Rejection]]:
    number = 1
    while True:
        number += 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader cannot resynchronise after a quoting error: say that the rest of
            # the file was not read, or its rows would vanish without a word.
            yield number, Rejection(number, None, f"malformed CSV: {exc}; the rows after it "
                                                  "were not read")
            return
        if any(len(c) > MAX_CELL for c in cells):
            yield number, Rejection(number, None, f"a cell is longer than {MAX_CELL} characters")
            continue
        yield number, cells


def _columns(ctx: RequestContext, object_type: str,
             header: list[str]) -> list[tuple[str, str | None]]:
    """(attribute or custom key, custom value type or None) per column; unknown or repeated
    headers refuse the file."""
    allowed = _importable(object_type)
    custom = definitions(ctx, object_type)
    columns: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for raw in header:
        name = raw.strip().lstrip("\ufeff")
        if name in seen:
            raise BadUserInput(f"column {name} appears twice", field=name)
        seen.add(name)
        if name.startswith(CUSTOM_PREFIX):
            key = name.removeprefix(CUSTOM_PREFIX)
            if key not in custom:
                raise BadUserInput(f"{object_type} has no custom field {key}", field=name)
            columns.append((key, custom[key].value_type or "text"))
            continue
        attribute = _snake(name)
        if attribute not in allowed:
            raise BadUserInput(f"unknown {object_type} column {name}; expected "
                               f"{', '.join(sorted(camel(a) for a in allowed))} or "
                               f"{CUSTOM_PREFIX}<key>", field=name)
        columns.append((attribute, None))
    return columns


# -- export --------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def export_csv(ctx: RequestContext, object_type: str, out: TextIO) -> ExportResult:
    """Write the caller's view of every record of `object_type` they may see to `out`."""
    object_type = _object_type(object_type)
    spec = ctx.guard.policy.spec(object_type)
    readable = []
    omitted = []
    for fspec in spec.fields:
        header = (CUSTOM_PREFIX + fspec.attr) if fspec.custom else camel(fspec.name)
        if ctx.guard.decision(object_type, fspec.name) is Decision.DENY:
            omitted.append(header)
        else:
            readable.append((fspec.name, header))
    writer = csv.writer(out)
    columns = ("id", *(h for _, h in readable))
    writer.writerow(columns)
    rows = 0
    after = None
    while True:
        page = list_records(ctx, object_type, first=_PAGE, after=after)
        for record in page.items:
            line = [record.id]
            for name, _ in readable:
                try:
                    line.append(_cell(ctx.guard.reveal(object_type, record, name)))
                except FieldForbidden:
                    line.append("")
            writer.writerow(line)
            rows += 1
        if not page.has_next:
            break
        after = page.end_cursor
    ctx.audit(f"{object_type}.export", object_type=object_type,
              fields=[f"rows:{rows}", *(f"column:{c}" for c in columns[1:]),
                      *(f"omitted:{c}" for c in omitted)])
    return ExportResult(rows, columns, tuple(omitted))
