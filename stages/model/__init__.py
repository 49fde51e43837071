"""Model helpers shared by stages: the built-in tiny model and the artifact loader."""
