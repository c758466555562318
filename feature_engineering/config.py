"""Configuration of the feature jobs (section ``features``)."""

from __future__ import annotations

from mtlrec.config import StrictModel


class FeatureConfig(StrictModel):
    pass
