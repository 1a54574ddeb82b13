"""`python -m workers NAME...`: serve the workers of the named task queues until SIGINT or
SIGTERM (the same as `keel worker NAME...`)."""

import sys

from workers import NAMES
from workers.process import serve

if __name__ == "__main__":
    names = sys.argv[1:]
    unknown = [n for n in names if n not in NAMES]
    if not names or unknown:
        print(
            f"usage: python -m workers NAME... (names: {', '.join(NAMES)})"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            file=sys.stderr,
        )
        sys.exit(2)
    serve(*names)
