"""leo-tutorial: a faithful, batched PyTorch LEO (Rusu et al., ICLR 2019) for learning and
teaching."""

from .config import PRESETS, LEOConfig, TrainConfig, preset
from .errors import UserError
from .model import LEO, LEOOutput
from .viz import setup_notebook

__version__ = "0.1.0"
__all__ = [
    "LEO",
    "LEOConfig",
    "LEOOutput",
    "PRESETS",
    "TrainConfig",
    "UserError",
    "preset",
    "setup_notebook",
]
