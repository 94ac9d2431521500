"""drawnet: DRAW, the Deep Recurrent Attentive Writer (Gregor et al. 2015), in PyTorch."""
from .attention import filterbank, read_attention, write_attention
from .errors import DrawnetError
from .model import DRAW, PRESETS, DrawConfig

__all__ = ["DRAW", "DrawConfig", "DrawnetError", "PRESETS", "filterbank", "read_attention", "write_attention"]
__version__ = "0.1.0"
