"""``python -m tests.run_chain FILE...``: the test chain (ingest → gain → levels) in a fresh process.

Used by the resume test, which kills this process with SIGKILL in the middle of the gain stage.
"""

from __future__ import annotations

import sys

from tests.stages import chain

if __name__ == "__main__":
    report = chain(paths=sys.argv[1:])
    print(report.summary())
