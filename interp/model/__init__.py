"""The model: loading a TransformerBridge with its checks (``loading``), the tiny random-init fixtures
(``fixtures``), and decoding a residual through its final norm and unembedding (``decode``).
"""

from .loading import Model, ModelInfo, as_model, load_model  # noqa: E402

__all__ = ["Model", "ModelInfo", "as_model", "load_model"]
