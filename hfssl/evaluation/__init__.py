"""Downstream evaluation of pretrained encoders: GLUE fine-tuning, linear probing and LP-FT.

Modules (imported on demand; this package import stays light so recipes can check flags fast):
``args`` (flags), ``glue`` (task table, TSV/Hub/custom readers), ``scoring`` (official metrics via
shipped ``evaluate`` modules in ``metrics/``), ``finetune`` (the Accelerate loop), ``linear_probe``,
``lp_ft``, ``report`` (seed summaries, BERT-paper table) and ``runner`` (end to end, results.json).
"""
