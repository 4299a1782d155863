"""Hub export: model cards (config, data, results, loss plot) and pushes of a run's output directory.

``write_run_card`` is what the training loop calls at the end of every run (output_dir/README.md);
``write_model_card`` is the same without the never-fail wrapper (``python -m hfssl.push DIR --card_only``).
"""

from hfssl.hub.card import build_model_card, write_model_card, write_run_card
from hfssl.hub.upload import HubError, latest_checkpoint, plan_upload, push_output_dir, validate_repo_id

__all__ = [
    "HubError",
    "build_model_card",
    "latest_checkpoint",
    "plan_upload",
    "push_output_dir",
    "validate_repo_id",
    "write_model_card",
    "write_run_card",
]
