"""The spark-submit flags a job's config implies, for scripts/submit.sh (NUL-separated).

    python scripts/submit_args.py [--config FILE] [--set k=v ...] [job arguments ...]

The whole config is validated here, so a bad one stops with one line and exit 2 before
any JVM starts. Arguments other than --config/--set (the job's own) are ignored.
"""

from __future__ import annotations

import argparse
import sys

from jobs.config import job_config
from mtlrec.config import add_config_arguments
from mtlrec.spark import submit_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, add_help=False)
    add_config_arguments(parser)
    args, _ = parser.parse_known_args()
    cfg = job_config(args, "submit")
    sys.stdout.write("\0".join(submit_arguments(cfg.spark)))


if __name__ == "__main__":
    main()
