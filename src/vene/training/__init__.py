"""Training loops for interventions (IIT / DAS), kept outside the model class."""
from __future__ import annotations

from .alignment import (
    annealed_interventions,
    batch_unit_locations,
    eval_alignment,
    train_alignment,
    weighted_average,
)
from .guards import check_gradient_checkpointing
from .trainer import TrainingModule, collate_interventions

__all__ = [
    "annealed_interventions", "batch_unit_locations", "check_gradient_checkpointing",
    "eval_alignment", "train_alignment", "weighted_average", "TrainingModule", "collate_interventions",
]
