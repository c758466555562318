"""Feature layer: turns a batch of gold/examples columns into one dense vector per row.

Built from the ``FeatureSpec`` and plain numbers (the model translates its config): one
embedding table per categorical feature (row 0 is the out-of-vocabulary bucket), dense
features normalised with the spec's mean/std, pretrained embedding groups stacked in spec
order (optionally projected), and an optional DCN-v2 cross network on top.

Shapes: B rows per batch; every input column is ``[B]``; the output is ``[B, output_dim]``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from mtlrec.feature_spec import FeatureSpec

Batch = dict[str, Tensor]


class CrossNetworkV2(nn.Module):
    """DCN-v2 cross layers: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``.

    With ``low_rank`` set, ``W_l = U_l V_l^T`` (the paper's cost-efficient form).
    """

    def __init__(self, dim: int, num_layers: int, low_rank: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            if low_rank is None:
                self.layers.append(nn.Linear(dim, dim))
            else:
                down = nn.Linear(dim, low_rank, bias=False)
                self.layers.append(nn.Sequential(down, nn.Linear(low_rank, dim)))

    def forward(self, x0: Tensor) -> Tensor:
        """``[B, dim]`` -> ``[B, dim]``."""
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class FeatureLayer(nn.Module):
    """Batch -> ``[B, output_dim]`` float tensor.

    ``embedding_dim``: the width of every categorical table (None: each feature's width in
    the spec); ``text_projection_dim``: the width each pretrained embedding group is
    projected to (0: fed as is); ``cross_layers``: DCN-v2 layers on top (0: none), of rank
    ``cross_low_rank`` (None: full rank); ``context_dropout``: in training, the share of
    rows whose ``unknown_at_scoring`` features are all set to index 0 together.
    """

    dense_mean: Tensor
    dense_std: Tensor

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int | None,
        text_projection_dim: int,
        cross_layers: int = 0,
        cross_low_rank: int | None = None,
        context_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not (spec.categorical or spec.dense or spec.embeddings):
            raise ValueError("feature spec lists no feature columns")
        self.categorical_names = [f.name for f in spec.categorical]
        self.hidden_together = [f.unknown_at_scoring for f in spec.categorical]
        self.context_dropout = context_dropout
        self.dense_names = [f.name for f in spec.dense]
        self.embedding_groups = [list(e.columns) for e in spec.embeddings]
        # A list, not a dict: feature names may contain characters ModuleDict rejects.
        self.embeddings = nn.ModuleList(
            nn.Embedding(f.vocab_size, embedding_dim or f.embedding_dim)
            for f in spec.categorical
        )
        for table in self.tables():
            nn.init.normal_(table.weight, std=0.05)
        self.register_buffer(
            "dense_mean", torch.tensor([f.mean for f in spec.dense], dtype=torch.float32)
        )
        self.register_buffer(
            "dense_std", torch.tensor([f.std for f in spec.dense], dtype=torch.float32)
        )
        self.projections = nn.ModuleList(
            nn.Linear(len(cols), text_projection_dim) if text_projection_dim > 0 else nn.Identity()
            for cols in self.embedding_groups
        )
        width = sum(table.embedding_dim for table in self.tables()) + len(self.dense_names)
        for cols in self.embedding_groups:
            width += text_projection_dim if text_projection_dim > 0 else len(cols)
        self.cross = CrossNetworkV2(width, cross_layers, cross_low_rank) if cross_layers else None
        self.output_dim = width

    def tables(self) -> list[nn.Embedding]:
        """The categorical embedding tables, in ``categorical_names`` order."""
        return cast(list[nn.Embedding], list(self.embeddings))

    def forward(self, batch: Batch) -> Tensor:
        """``{column: [B]}`` -> ``[B, output_dim]``: the parts below, concatenated."""
        parts: list[Tensor] = []
        hide: Tensor | None = None  # [B] bool: rows whose slot features are hidden
        if self.training and self.context_dropout > 0 and self.categorical_names:
            rows = batch[self.categorical_names[0]].shape[0]
            device = self.dense_mean.device
            hide = torch.rand(rows, device=device) < self.context_dropout
        for name, table, hidden in zip(
            self.categorical_names, self.tables(), self.hidden_together, strict=True
        ):
            index = batch[name].long()
            # Indices outside the table (a newer vocabulary, corrupt rows) fall to OOV row 0.
            valid = (index >= 0) & (index < table.num_embeddings)
            if hidden and hide is not None:
                valid = valid & ~hide
            parts.append(table(torch.where(valid, index, torch.zeros_like(index))))  # [B, E_i]
        if self.dense_names:
            raw = torch.stack([batch[name].float() for name in self.dense_names], dim=-1)  # [B, Dn]
            # Missing dense values (NaN) become the mean, i.e. 0 after normalising.
            parts.append(torch.nan_to_num((raw - self.dense_mean) / self.dense_std, nan=0.0))
        for cols, projection in zip(self.embedding_groups, self.projections, strict=True):
            vector = torch.stack([batch[c].float() for c in cols], dim=-1)  # [B, len(cols)]
            parts.append(projection(torch.nan_to_num(vector, nan=0.0)))  # [B, P]
        x = torch.cat(parts, dim=-1)
        return self.cross(x) if self.cross is not None else x
