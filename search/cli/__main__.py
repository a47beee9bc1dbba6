"""``python -m search.cli``: the ``prunetune`` command."""

from __future__ import annotations

from search.cli._main import main

raise SystemExit(main())
