"""Long runs: sharded, resumable runs in a run directory (``resumable``), Ray-distributed shards
(``distributed``), and stage checkpoints for dataset-level statistics (``checkpoints``).
"""
