"""The compiled fast path for trusted documents (issue 7): plans made once per document and
schema, run without the GraphQL executor, with the same guard calls and the same answer."""

from schema.compiled.cache import PlanCache
from schema.compiled.planner import Plan, Unsupported, compile_document, describe
from schema.compiled.runner import BadVariables, run

__all__ = ["BadVariables", "Plan", "PlanCache", "Unsupported", "compile_document", "describe",
           "run"]
