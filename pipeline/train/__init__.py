"""Training: the per-rank loop (`loop`), local and multi-node launch (`launch`), the step
(`trainer`, `engine`, `objective`), hooks around the loop (`hooks`, `tracking`), checkpoints
(`checkpoint`), the LR schedule and offline triplet selection."""
