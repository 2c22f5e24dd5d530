"""The batched forwards over a model's activations: hook names for components (``sites``), hook
registration that never leaks (``hooks``), reading activations (``capture``), changing them (``interventions``), running
many changed forwards at once (``variants``), MoE internals (``experts``) and generation under interventions
(``generation``).
"""
