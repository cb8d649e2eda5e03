"""ml_collections configs of experiments/train.py: `--config=experiments/configs/<name>.py[:variant]`."""
