"""`python -m lorasweep.export RUN_DIR --merge [--out DIR]`: a run's adapter merged into its base model,
saved as a standalone model and tokenizer (default RUN_DIR/merged).

From Python: `from lorasweep.export import load_adapted, load_adapters, merge` (lorasweep.run.adapters).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .console import quiet_libraries, say
from .errors import USER_ERRORS, ExportError
from .run.adapters import load_adapted, load_adapters, merge, read_run
from .run.store import folder_size

__all__ = ["load_adapted", "load_adapters", "merge", "read_run", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorasweep.export",
                                     description="After a sweep: merge a run's adapter into its base model, "
                                                 "or load several runs' adapters on one base.")
    parser.add_argument("run_dir", help="a run's folder in the results store (it holds result.json)")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model and save it")
    parser.add_argument("--out", help="where to save the merged model (default RUN_DIR/merged)")
    args = parser.parse_args(argv)
    if not args.merge:
        parser.error("nothing to do: pass --merge to save a standalone merged model")
    quiet_libraries()
    try:
        target = merge(args.run_dir, args.out)
    except (ExportError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say(f"merged model: {target} ({folder_size(target):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
