"""Configuration of the synthetic log generator (section ``generator``)."""

from __future__ import annotations

from pydantic import Field

from mtlrec.config import StrictModel


class GeneratorConfig(StrictModel):
    seed: int = 7
    num_users: int = Field(2_000, gt=0)
    num_items: int = Field(1_000, gt=0)
    num_days: int = Field(14, gt=1)
    start_date: str = "2026-10-01"
