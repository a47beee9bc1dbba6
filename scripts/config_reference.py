"""The configuration reference: docs/config.md, generated from the typed config models.

    .venv/bin/python scripts/config_reference.py            # print it
    .venv/bin/python scripts/config_reference.py --write    # write docs/config.md
    .venv/bin/python scripts/config_reference.py --check    # exit 1 when docs/config.md is out of date
    .venv/bin/python scripts/config_reference.py --smoke    # CI: render it, check it has every section

tests/search/test_config_reference.py fails when the file and the code drift
apart; this script is how to bring them back together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search._config import Config
from search._reference import config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {DOC.name} in docs/")
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/config.md differs from the code")
    ap.add_argument("--smoke", action="store_true", help="render the reference and check its sections (CI)")
    args = ap.parse_args()
    text = config_reference()
    if args.write:
        DOC.write_text(text)
        print(f"wrote {DOC} ({len(text.splitlines())} lines)")
    elif args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run scripts/config_reference.py --write", file=sys.stderr)
            return 1
        print(f"{DOC} matches the code")
    elif args.smoke:
        missing = [name for name in Config.model_fields if f"## [{name}]" not in text]
        print("| sections | keys | missing |\n|---|---|---|")
        rows = sum(line.startswith("| `") for line in text.splitlines())
        print(f"| {len(Config.model_fields)} | {rows} | {', '.join(missing) or '-'} |")
        return 1 if missing else 0
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
