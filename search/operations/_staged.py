"""Output folders that are never half-written: files are made in a staging folder and moved in at the end.

An export or a report interrupted by Ctrl-C (or failing) leaves ``--out`` as
it was: its staging folder is removed and nothing moves. On success the files
move into ``--out`` in one protected step (:func:`spaces.protected`: a signal
waits for its end), each with ``os.replace``; a stale file that the new
output would contradict (an old ``model.onnx`` beside a new export) goes too.
A process killed outright (a second signal, SIGKILL) leaves only a hidden
``.prunetune-partial-*`` folder inside ``--out``, named for what it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from spaces import protected

__all__ = ["staged"]

PREFIX = ".prunetune-partial-"


@contextlib.contextmanager
def staged(dest: Path, *, stale: Iterable[str] = (), last: str | None = None) -> Iterator[Path]:
    """A new empty folder inside ``dest`` (which must exist) to write into; see the module docs.

    ``stale``: names of files (or folders) in ``dest`` removed when the staged files move
    in (unless one of them replaces it). ``last``: the file that moves in
    last (an export's ``model.json``, which says what the folder holds).
    """
    tmp = Path(tempfile.mkdtemp(prefix=PREFIX, dir=dest))
    try:
        yield tmp
    except BaseException:
        with protected():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    with protected():
        made = {f.name for f in tmp.iterdir()}
        if last is not None and last in made:
            _remove(dest / last)  # the old manifest goes first: it never stands beside the new files
        for name in set(stale) - made:
            _remove(dest / name)
        for name in sorted(made, key=lambda n: (n == last, n)):
            if (dest / name).is_dir() and not (dest / name).is_symlink():
                shutil.rmtree(dest / name)  # a folder (a Hugging Face export's hf/) is replaced whole
            os.replace(tmp / name, dest / name)
        tmp.rmdir()


def _remove(path: Path) -> None:
    """Remove a stale file or folder, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
