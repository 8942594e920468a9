"""primaldual: attention as the support vector expansion of an SVR whose primal is a neural-network layer.

``primaldual.functional``  the attention variants as functions on ``(batch, heads, seq, head_dim)`` tensors
``primaldual.Attention``   the multi-head layer (batch first, timm-compatible)
``primaldual.svr``         the framework made executable: a real ε-SVR evaluated as attention
``primaldual.convert``     swap the attention of an existing model (timm ViTs, ``nn.MultiheadAttention``) for a variant,
                          keeping its weights
``primaldual.integrations``  the same inside Hugging Face transformers and PyTorch's own modules
"""

from . import functional
from .integrations import convert
from .layers import Attention
from .svr import SVRAttention

__all__ = ["Attention", "SVRAttention", "convert", "functional"]
__version__ = "0.1.0"
