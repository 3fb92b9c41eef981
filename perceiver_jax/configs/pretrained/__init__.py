"""Configs of the released Perceiver IO models, with the reference hyperparameters."""
