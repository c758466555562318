"""``jobs/build_features.py`` whose driver dies between write and commit, for spark-submit.

    spark-submit tests/cluster_crash_driver.py TABLE [build_features arguments]

The job runs unchanged until Spark's executors have written TABLE's Parquet files into
their write directory; then the driver SIGKILLs itself, just before the delta-rs commit
(scripts/cluster_faults.py: the table must stay at its previous version).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

# spark-submit runs this file as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.build_features import main
from mtlrec.lake import Lake

_commit = Lake._commit_write_dir


def _die_before_committing(self: Lake, name: str, write_dir: str, *args: Any) -> Any:
    if name == sys.argv[1]:
        print(f"crash: {name}: files written to {write_dir}; killing the driver", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return _commit(self, name, write_dir, *args)


if __name__ == "__main__":
    Lake._commit_write_dir = _die_before_committing  # type: ignore[method-assign]
    sys.exit(main(sys.argv[2:]))
