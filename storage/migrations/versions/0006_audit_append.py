"""Audit entries appended in one statement (PostgreSQL): `audit_append_entries`.

A batch of read entries used to take four round trips (begin, lock the head, insert and move
the head, commit), each a wake-up of both processes. This function does the same in the server,
in the caller's statement: lock the head row, chain each entry to the one before (SHA-256 of the
entry's canonical JSON, which the application sends in two pieces around the values only known
under the lock: previous hash, sequence number and time), insert the rows and move the head.
It writes nothing and answers NULL when a signed checkpoint falls due within the batch: the
application then appends the batch the usual way, which signs it. `enclave audit verify`
recomputes every hash in the application, so a function that chained differently is caught.

Revision ID: 0006_audit_append
Revises: 0005_documents
"""
from alembic import op

revision = '0006_audit_append'
down_revision = '0005_documents'
branch_labels = None
depends_on = None

# The time format is Python's datetime.isoformat(timespec="microseconds") of a UTC time,
# which is what the application's own appends write.
_FUNCTION = """
CREATE FUNCTION audit_append_entries(
    heads text[], middles text[], actors text[], roles text[], actions text[],
    object_types text[], object_ids text[], fields text[], decisions text[], reasons text[],
    request_ids text[]) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_hash text;
    due bigint;
    entries int := cardinality(heads);
    seqs bigint[];
    stamps text[];
    prevs text[];
    hashes text[];
    stamp text;
BEGIN
    SELECT seq, hash, checkpoint_due INTO head_seq, head_hash, due
      FROM audit_head WHERE id = 1 FOR UPDATE;
    IF head_seq IS NULL OR entries IS NULL OR head_seq + entries >= due THEN
        RETURN NULL;
    END IF;
    FOR i IN 1..entries LOOP
        stamp := to_char(clock_timestamp() AT TIME ZONE 'UTC',
                         'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00';
        head_seq := head_seq + 1;
        prevs[i] := head_hash;
        head_hash := encode(sha256(convert_to(
            heads[i] || head_hash || middles[i] || head_seq::text || ',"ts":"' || stamp || '"}',
            'UTF8')), 'hex');
        seqs[i] := head_seq;
        stamps[i] := stamp;
        hashes[i] := head_hash;
    END LOOP;
    INSERT INTO audit_events (seq, ts, actor, roles, action, object_type, object_ids, fields,
                              decision, reason, request_id, prev_hash, hash)
    SELECT * FROM unnest(seqs, stamps, actors, roles, actions, object_types, object_ids,
                         fields, decisions, reasons, request_ids, prevs, hashes);
    UPDATE audit_head SET seq = head_seq, hash = head_hash WHERE id = 1;
    RETURN head_seq;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_append_entries(text[], text[], text[], "
                   "text[], text[], text[], text[], text[], text[], text[], text[])")
