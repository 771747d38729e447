"""Entry points on top of data_prep, losses and pipeline: the CLI, Ray jobs and submission."""
