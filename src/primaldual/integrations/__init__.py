"""The variants inside other libraries' models.

``convert(model, variant, **options)``  swap the attention of timm ViTs and ``torch.nn.MultiheadAttention`` modules
``integrations.transformers``           Hugging Face transformers: ``register()`` the ``"primaldual-<variant>"``
                                        attention implementations (imported on its own: it needs transformers)
"""

from .convert import convert

__all__ = ["convert"]
