"""pipeline: shards -> trained embedding model -> evaluation -> MLflow.

Entry points (see docs/training.md):
    pipeline.config.TrainConfig                 the typed training config
    pipeline.train.loop.run_rank(cfg)           the loop, on an initialised process group
    pipeline.train.launch.train_local(cfg, n)   N local ranks (what `facetrain train` calls)
    pipeline.models.build_backbone              backbones by name
    pipeline.train.checkpoint.load_backbone     a trained backbone from a checkpoint dir
"""
