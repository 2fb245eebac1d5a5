"""Attention-map statistics."""
