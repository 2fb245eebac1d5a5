"""Hidden-state statistics."""
