"""The security kernel: keys and field crypto, authorisation, the guard, the audit log, tokens."""
