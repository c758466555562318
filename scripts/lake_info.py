"""Facts about the configured lake that scripts/demo.sh prints or passes on.

    python scripts/lake_info.py test-day [--config FILE] [--set k=v ...]
    python scripts/lake_info.py table-uri gold/recommendations [--config FILE] [--set k=v ...]

Unknown arguments (those meant for the jobs) are ignored.
"""

from __future__ import annotations

import argparse

from jobs.config import job_config
from mtlrec.config import add_config_arguments
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.tables import GOLD_RECOMMENDATIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("fact", choices=["test-day", "table-uri"])
    parser.add_argument("table", nargs="?", default=GOLD_RECOMMENDATIONS)
    add_config_arguments(parser)
    args, _ = parser.parse_known_args()
    lake = Lake.from_config(job_config(args, "lake_info").lake)
    if args.fact == "test-day":
        print(GoldSnapshot.resolve(lake).spec.test_days[-1])
    else:
        print(lake.table_uri(args.table))


if __name__ == "__main__":
    main()
