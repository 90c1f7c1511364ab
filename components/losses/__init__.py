"""Loss modules: each one idea, one short function ``fn(batch, <networks>, **hyperparameters) -> dict``.

The dict holds ``"loss"`` (the differentiable term) and detached metrics. Recipes bind networks to the function's
network arguments by name (``nets: {policy: policy}``) and give hyperparameters as keywords.
"""
