"""A signed checkpoint stored in one statement (PostgreSQL): `audit_store_checkpoint`.

The server's signer (`security.audit.sign_ahead`) grows the Merkle tree and signs holding no
lock, then stores the checkpoint under the audit head row's lock, which every appender of every
worker waits on. It stored it in five round trips from a thread of a busy worker (lock the head,
check the last checkpoint, save the tree, insert the checkpoint, move the promise) and a commit;
between each, that thread waited for the interpreter lock behind the worker's event loop (up to
its 5 ms switch interval). Measured under the trusted-read benchmark: every checkpoint (two to
three a second) held every appender up for 40-90 ms, which made most of the reads' p99. This
function does the same checks and writes inside the server, and the signer calls it in
autocommit mode: the head row is locked for the statement only.

It returns the size the latest checkpoint signs afterwards: the new checkpoint's when it was
stored; the newer one's when another signer (the count) stored one since the log was read; the
last one's when the log has already outgrown the promise the new note makes (the count signs
then). Each statement in it reads what is committed when it runs, after the lock is held.

Revision ID: 0008_audit_store_checkpoint
Revises: 0007_audit_leaf
"""
from alembic import op

revision = '0008_audit_store_checkpoint'
down_revision = '0007_audit_leaf'
branch_labels = None
depends_on = None

_SIGNATURE = "audit_store_checkpoint(bigint, text, text, bigint, integer, text, bigint, text)"

_FUNCTION = """
CREATE FUNCTION audit_store_checkpoint(
    new_seq bigint, new_hash text, new_ts text, new_next_due bigint, new_key_version integer,
    new_signature text, read_last bigint, tree text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    now_last bigint;
BEGIN
    SELECT seq INTO head_seq FROM audit_head WHERE id = 1 FOR UPDATE;
    SELECT coalesce(max(seq), 0) INTO now_last FROM audit_checkpoints;
    IF now_last <> read_last THEN
        RETURN now_last;
    END IF;
    IF head_seq IS NULL OR head_seq >= new_next_due THEN
        RETURN read_last;
    END IF;
    UPDATE settings SET value = tree WHERE key = 'audit_tree';
    IF NOT FOUND THEN
        INSERT INTO settings (key, value) VALUES ('audit_tree', tree);
    END IF;
    INSERT INTO audit_checkpoints (seq, hash, ts, next_due, key_version, signature)
        VALUES (new_seq, new_hash, new_ts, new_next_due, new_key_version, new_signature);
    UPDATE audit_head SET checkpoint_due = new_next_due WHERE id = 1;
    RETURN new_seq;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {_SIGNATURE}")
