"""Inference for datasets: the flow's draws, results in ArviZ's layout, the model's
exact density, importance sampling, the Laplace and NUTS tiers of the ladder, and many
datasets at once."""
