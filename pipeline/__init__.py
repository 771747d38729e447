"""pipeline: shards -> trained embedding model -> evaluation -> MLflow.

Entry points (see docs/training.md):
    pipeline.config.TrainConfig           the typed training config
    pipeline.run.run_rank(cfg)            the loop, on an initialised process group
    pipeline.run.launch_local(cfg, nproc) N local ranks (what `facetrain train` calls)
    pipeline.models.build_backbone        backbones by name
    pipeline.checkpoint.load_backbone     a trained backbone from a checkpoint dir
"""
