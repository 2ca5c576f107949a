"""Files the command line writes: whole or not at all.

A command that fails half way (a refused role, a lost database) must not leave a truncated file
where the user's old one was: each output is written beside its target as a hidden partial file
(mode 0600) and renamed over it only once it is complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from security.errors import BadUserInput


@contextmanager
def replaced_when_done(target: Path, *, newline: str | None = None) -> Iterator[TextIO]:
    """A text handle whose content becomes `target` when the block ends without an error."""
    target = target.absolute()
    if target.is_dir():
        raise BadUserInput(f"{target} is a folder: name a file to write", field="output")
    if not target.parent.is_dir():
        raise BadUserInput(f"there is no folder {target.parent} to write {target.name} in",
                           field="output")
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as handle:
            yield handle
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
