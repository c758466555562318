"""Synthetic e-commerce logs with ground truth: the embedded default dataset."""
