"""InstAP training (installed as `instap_train`): Trainer subclasses for both stages and the `run_*.py` scripts."""

from .trainer import (
    STAGE1_LOSS_TERMS,
    STAGE2_LOSS_TERMS,
    InstAPAlignTrainer,
    InstAPPretrainTrainer,
    NonFiniteLossError,
    no_decay_parameter,
)

__all__ = [
    "InstAPAlignTrainer",
    "InstAPPretrainTrainer",
    "NonFiniteLossError",
    "STAGE1_LOSS_TERMS",
    "STAGE2_LOSS_TERMS",
    "no_decay_parameter",
]
