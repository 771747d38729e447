"""Shipped training and prep recipes (YAML), installed as `facetrain.configs` package data.

`facetrain configs list` names them and `--config NAME` finds one by name."""
