"""Train / val / test by day, never random (DESIGN.md 4.2)."""

from __future__ import annotations

from dataclasses import dataclass

from feature_engineering.gold_config import SplitConfig
from mtlrec.errors import InputError


class SplitError(InputError, ValueError):
    """The days at hand cannot be split as configured."""


@dataclass(frozen=True)
class SplitPlan:
    train: list[str]
    val: list[str]
    test: list[str]

    def split_of(self) -> dict[str, str]:
        """Day -> split name, for every day the plan covers."""
        out = {d: "train" for d in self.train}
        out.update({d: "val" for d in self.val})
        out.update({d: "test" for d in self.test})
        return out


def plan_splits(days: list[str], cfg: SplitConfig) -> SplitPlan:
    """Assign the ``days`` holding impressions to splits.

    Explicit lists are taken as given (restricted to the days present, so a
    missing day is simply empty); otherwise the last days are test and val.
    """
    present = sorted(set(days))
    if cfg.train_days is not None:
        assert cfg.val_days is not None and cfg.test_days is not None
        plan = SplitPlan(
            train=[d for d in cfg.train_days if d in present],
            val=[d for d in cfg.val_days if d in present],
            test=[d for d in cfg.test_days if d in present],
        )
        if not plan.train:
            raise SplitError(f"none of splits.train_days {cfg.train_days} has impressions")
        return plan
    held_out = cfg.test_day_count + cfg.val_day_count
    if len(present) <= held_out:
        raise SplitError(
            f"{len(present)} day(s) with impressions cannot give splits.test_day_count="
            f"{cfg.test_day_count} + splits.val_day_count={cfg.val_day_count} and a train day"
        )
    return SplitPlan(
        train=present[:-held_out],
        val=present[-held_out : len(present) - cfg.test_day_count],
        test=present[len(present) - cfg.test_day_count :],
    )
