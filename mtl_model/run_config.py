"""How a distributed training run lives, reads, checkpoints and recovers (section ``run``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mtlrec.config import StrictModel


class TrainRunConfig(StrictModel):
    """Where a run lives and how its workers read, checkpoint and recover (section ``run``)."""

    storage_path: str = Field("runs", description="Runs directory (local path or s3:// URI).")
    name: str | None = Field(None, description="Run name; None = mtl-<UTC timestamp>.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from checkpoint.")
    checkpoints_to_keep: int = Field(2, gt=0)
    reader_pool: Literal["dummy", "thread"] = Field(
        "dummy",
        description="Petastorm reader pool; 'dummy' avoids the empty-shard hazard "
        "(docs/petastorm_hazard.md).",
    )
    reader_workers: int = Field(1, gt=0, description="Threads of the thread pool.")
    shuffle_buffer_rows: int = Field(
        8192, ge=0, description="Rows shuffled locally across row-group boundaries; 0 = off."
    )
    read_retries: int = Field(2, ge=0, description="Re-reads of a shard whose row count is off.")
    validation_split: str = "val"
    test_split: str = "test"
    torch_threads_per_worker: int | None = Field(
        None, gt=0, description="torch intra-op threads per worker; None = cpus_per_worker."
    )
    mlflow_tracking_uri: str | None = None
