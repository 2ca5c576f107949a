"""Each audit entry keeps its Merkle leaf hash (`audit_events.leaf`), written as it is appended;
the one-statement append takes an entry's object ids once.

Signing a checkpoint grows the Merkle tree by the leaves of the entries since the last one.
Those leaves used to be recomputed from the stored rows (every column read back, its JSON
parsed and written out again canonically, hashed): under a steady read load that was about a
third of the CPU the requests themselves took. The appender now stores the leaf beside the
chain hash (SHA-256 of 0x00 and the same canonical bytes), and the signer reads 32-byte
leaves. It trusts them no more than it trusted the rows it used to read back: `enclave audit
verify` and every export recompute each leaf from the columns and never read this one, and
verify names an entry whose stored leaf is not its own.

The object ids are most of a read's entry (50 ids, about 2 kB): 0006's function received them
twice, inside the canonical encoding and as the column. Now the application sends the encoding
in pieces before and after them, and the function puts it together.

Revision ID: 0007_audit_leaf
Revises: 0006_audit_append
"""
import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0007_audit_leaf'
down_revision = '0006_audit_append'
branch_labels = None
depends_on = None

_OLD_SIGNATURE = ("audit_append_entries(text[], text[], text[], text[], text[], text[], "
                  "text[], text[], text[], text[], text[])")
_SIGNATURE = ("audit_append_entries(text[], text[], text[], text[], text[], text[], text[], "
              "text[], text[], text[], text[], text[])")

# As 0006's, with three changes: one time for the whole batch; the canonical bytes are made
# once and hashed twice (chain hash and leaf); and the object ids come once (they are most of
# an entry, and a column too): the application sends the canonical encoding in pieces before
# and after them.
_FUNCTION = """
CREATE FUNCTION audit_append_entries(
    befores text[], object_ids text[], afters text[], middles text[], actors text[],
    roles text[], actions text[], object_types text[], fields text[], decisions text[],
    reasons text[], request_ids text[]) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_hash text;
    due bigint;
    entries int := cardinality(befores);
    seqs bigint[];
    stamps text[];
    prevs text[];
    hashes text[];
    leaves text[];
    stamp text;
    entry bytea;
BEGIN
    SELECT seq, hash, checkpoint_due INTO head_seq, head_hash, due
      FROM audit_head WHERE id = 1 FOR UPDATE;
    IF head_seq IS NULL OR entries IS NULL OR head_seq + entries >= due THEN
        RETURN NULL;
    END IF;
    -- One time for the batch: its entries are appended by one statement.
    stamp := to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
             || '+00:00';
    FOR i IN 1..entries LOOP
        head_seq := head_seq + 1;
        prevs[i] := head_hash;
        entry := convert_to(
            befores[i] || object_ids[i] || afters[i] || head_hash || middles[i]
            || head_seq::text || ',"ts":"' || stamp || '"}', 'UTF8');
        head_hash := encode(sha256(entry), 'hex');
        seqs[i] := head_seq;
        stamps[i] := stamp;
        hashes[i] := head_hash;
        leaves[i] := encode(sha256('\\x00'::bytea || entry), 'hex');
    END LOOP;
    INSERT INTO audit_events (seq, ts, actor, roles, action, object_type, object_ids, fields,
                              decision, reason, request_id, prev_hash, hash, leaf)
    SELECT * FROM unnest(seqs, stamps, actors, roles, actions, object_types, object_ids,
                         fields, decisions, reasons, request_ids, prevs, hashes, leaves);
    UPDATE audit_head SET seq = head_seq, hash = head_hash WHERE id = 1;
    RETURN head_seq;
END $$
"""


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("leaf", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {_OLD_SIGNATURE}")
        op.execute(_FUNCTION)
        # A read's entry is about 2.3 kB, just over the size at which PostgreSQL tries to
        # compress a row's widest value; 50 random ids do not compress, so every insert paid
        # for a failed attempt (pglz, measured as 2% of the server's CPU under reads).
        op.execute("ALTER TABLE audit_events SET (toast_tuple_target = 8160)")


def _previous_function() -> str:
    """0006's function, from its own file (revision modules are not importable by name)."""
    path = Path(__file__).with_name("0006_audit_append.py")
    spec = importlib.util.spec_from_file_location("enclave_migration_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module._FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {_SIGNATURE}")
        op.execute(_previous_function())
        op.execute("ALTER TABLE audit_events RESET (toast_tuple_target)")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("leaf")
