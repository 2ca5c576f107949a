"""A unit of work is freed when it ends, by reference counting, not left to the garbage
collector: a reference cycle through the context or its session keeps the whole unit (the
session, its identity map, every record loaded, the guard) alive until a collection, and under
the ordinary GraphQL path those collections took 100 ms pauses (measured with `gc.callbacks`
in a benchmark worker)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from conftest import operator

from schema.context import unit_of_work
from schema.ops import contacts as contact_ops
from schema.runtime import Appliance


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_unit_with_a_savepoint_and_a_loader_is_freed_when_it_ends(
        appliance: Appliance, collector_off: None) -> None:
    """A savepoint (every GraphQL mutation has one), a record loaded through the unit's
    loader: once the unit ends, its context and session are gone, the collector off."""
    manager = operator("sales_manager", team="east")
    with unit_of_work(appliance, manager) as ctx:
        with ctx.session.begin_nested():
            contact = contact_ops.create_contact(ctx, {"last_name": "Lifetime"})
        assert ctx.loader("contact").load(contact.id) is not None
        context, session = weakref.ref(ctx), weakref.ref(ctx.session)
    del ctx, contact
    assert context() is None
    assert session() is None


def test_a_context_that_outlives_its_unit_holds_no_records_or_keys(
        appliance: Appliance, collector_off: None) -> None:
    """The ordinary executor's execution context refers to the request's context from a
    reference cycle, freed only when the collector runs: what the unit loaded (records,
    subject keys, opened values) must not live on with it."""
    manager = operator("sales_manager", team="east")
    with unit_of_work(appliance, manager) as ctx:
        created = contact_ops.create_contact(ctx, {"last_name": "Kept", "email": "k@example.org"})
        contact_id = created.id
    del created
    with unit_of_work(appliance, manager) as ctx:
        loaded = ctx.loader("contact").load(contact_id)
        assert loaded is not None
        assert ctx.guard.reveal("contact", loaded, "email") == "k@example.org"
        record = weakref.ref(loaded)
        assert ctx.guard._subject_keys  # the contact's key, unwrapped for this unit
    del loaded
    # `ctx` is still referenced here, as the execution context would hold it.
    assert record() is None
    assert not ctx.guard._subject_keys and not ctx.guard._aeads
