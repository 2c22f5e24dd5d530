"""Logit lens and tuned lens: decode every layer's residual stream (and, if asked, each sublayer's output) into a
next-token distribution, with named targets' probability / logit / rank, KL to the model's own distribution and
entropy (nats); dataset aggregates (top-1 accuracy and MRR per layer per target) and the tuned lens's trained
translators.

Papers: nostalgebraist, "interpreting GPT: the logit lens" (LessWrong, 2020); Belrose et al., "Eliciting Latent
Predictions from Transformers with the Tuned Lens" (arXiv 2303.08112, 2023).

One idea per module:

- :mod:`.reading`: which positions are decoded, and the one forward that reads the residuals there;
- :mod:`.logit`: the registered method :func:`logit_lens` (logit lens, or decoding through a tuned lens);
- :mod:`.tuned`: :class:`TunedLens` and :func:`train_tuned_lens` (a plain function, not a registry entry);
- :mod:`.statistics`: :class:`LensResult`, :func:`lens_summary` (``.aggregate()``), :func:`lens_takeover`;
- :mod:`.figures`: :func:`lens_heatmap`, :func:`lens_curves` (they read the table and its statistics only).
"""

from __future__ import annotations

from .figures import lens_curves, lens_figure, lens_heatmap
from .logit import SCHEMA, SITE_PRESETS, logit_lens, resolve_sites
from .statistics import LensResult, lens_summary, lens_takeover
from .tuned import TunedLens, train_tuned_lens

__all__ = [
    "SCHEMA", "SITE_PRESETS", "LensResult", "TunedLens", "lens_curves", "lens_figure", "lens_heatmap",
    "lens_summary", "lens_takeover", "logit_lens", "resolve_sites", "train_tuned_lens",
]
