"""GraphQL for CSV import and export (see schema/ops/data_transfer.py)."""

from __future__ import annotations

import io
from typing import Any

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.ops import data_transfer as ops
from security.errors import BadUserInput

Ctx = Info[RequestContext, Any]

#: The largest CSV `importCsv` takes (the HTTP body limit may be lower).
MAX_IMPORT_BYTES = 5 * 1024 * 1024


@strawberry.type
class ImportRejection:
    row: int = strawberry.field(description="The CSV row (the header is row 1).")
    field: str | None = strawberry.field(description="The column at fault, when one is.")
    message: str


@strawberry.type
class ImportReport:
    created: int
    rejected: list[ImportRejection] = strawberry.field(
        description=f"Each rejected row (the first {ops.MAX_REPORTED}).")
    rejected_count: int
    rolled_back: bool = strawberry.field(
        description="allOrNothing was asked and a rejected row undid every row.")


@strawberry.type
class Queries:
    @strawberry.field(description="The records of account, contact or lead you may see, as "
                      "CSV, with only the columns you may read.")
    def export_csv(self, info: Ctx, object_type: str) -> str | None:
        out = io.StringIO()
        ops.export_csv(info.context, object_type, out)
        return out.getvalue()


@strawberry.type
class Mutations:
    @strawberry.mutation(description="Import accounts, contacts or leads from CSV, validated row "
                         "by row. allOrNothing: write nothing unless every row is good.")
    def import_csv(self, info: Ctx, object_type: str, csv: str,
                   all_or_nothing: bool = False) -> ImportReport | None:
        if len(csv) > MAX_IMPORT_BYTES or len(csv.encode()) > MAX_IMPORT_BYTES:
            raise BadUserInput(f"csv is larger than {MAX_IMPORT_BYTES} bytes", field="csv")
        with info.context.savepoint():
            result = ops.import_csv(info.context, object_type, io.StringIO(csv, newline=""),
                                    all_or_nothing=all_or_nothing)
        return ImportReport(
            created=result.created,
            rejected=[ImportRejection(row=r.row, field=r.field, message=r.message)
                      for r in result.rejected],
            rejected_count=result.rejected_count, rolled_back=result.rolled_back)
