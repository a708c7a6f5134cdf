"""Optimizers: ActiveLR (per-element LR multipliers from gradient signs) on torch's SGD, AdamW and
RAdam and on AdaBelief, and AdaBelief itself."""

from .active import ACTIVE_PRESETS, ActiveAdaBelief, ActiveAdamW, ActiveLR, ActiveRAdam, ActiveSGD
from .adabelief import AdaBelief

__all__ = ["ACTIVE_PRESETS", "ActiveAdaBelief", "ActiveAdamW", "ActiveLR", "ActiveRAdam", "ActiveSGD", "AdaBelief"]
