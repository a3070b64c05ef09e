"""Evaluation: zero-shot classification and image-text retrieval on tasks defined as data."""
