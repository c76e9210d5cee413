"""Training: config -> objects (`build`), the step (`step`), the loop (`loop`), checkpoints, metrics, AOT planning."""
