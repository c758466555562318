"""Configuration of the model (section ``model``) and of training (section ``train``)."""

from __future__ import annotations

from mtlrec.config import StrictModel


class ModelConfig(StrictModel):
    pass


class TrainConfig(StrictModel):
    pass
