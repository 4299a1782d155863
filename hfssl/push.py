"""Push a finished run to the Hugging Face Hub.

    python -m hfssl.push OUTPUT_DIR --hub_model_id user/name [--hub_token T] [--hub_private_repo]
        [--hub_revision BRANCH] [--commit_message MSG] [--include_checkpoints] [--card_only]
        [--license mit] [--language en,fr]

Uploads the model (safetensors only), config, tokenizer or image processor, a regenerated model
card with the loss plot and evaluation results, and the run's metrics. Every training run already wrote
``OUTPUT_DIR/README.md``; the push refreshes it (with the repo id in its snippet) unless it was written
by hand (no hfssl marker line), and ``--card_only`` refreshes it without pushing. Optimizer states and
``checkpoints/`` stay local unless ``--include_checkpoints`` (or ``--hub_strategy checkpoint``,
which uploads the newest one as ``last-checkpoint/``). The token defaults to ``HF_TOKEN`` or the
saved login and is never printed or written anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from hfssl.cli import main_entry, parse_args
from hfssl.config import HubArguments
from hfssl.hub.upload import DEFAULT_COMMIT_MESSAGE
from hfssl.logging import setup_logging


@dataclass
class PushArguments:
    output_dir: str = field(metadata={"help": "The run's --output_dir (holds config.json and model.safetensors)."})
    commit_message: str = field(default=DEFAULT_COMMIT_MESSAGE, metadata={"help": "Commit message on the Hub."})
    include_checkpoints: bool = field(
        default=False, metadata={"help": "Also upload checkpoints/ (optimizer states included)."}
    )
    card_only: bool = field(
        default=False, metadata={"help": "Only (re)write OUTPUT_DIR/README.md and the loss plot, offline; push "
                                         "nothing. A hand-written README.md (no hfssl marker line) is never replaced."}
    )
    license: Optional[str] = field(
        default=None, metadata={"help": "Licence id on the model card, e.g. mit or cc-by-4.0; unset: apache-2.0."}
    )
    language: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated ISO 639-1 codes on the card, e.g. en,fr; unset: en for "
                                        "text models, none for vision."}
    )

    def languages(self) -> list[str] | None:
        codes = [c.strip() for c in (self.language or "").split(",") if c.strip()]
        return codes or None


def _move_positional(argv: list[str]) -> list[str]:
    """Accept OUTPUT_DIR as the first positional argument, as the usage line promises."""
    if argv and not argv[0].startswith("-") and not argv[0].endswith((".json", ".yaml", ".yml")):
        return ["--output_dir", argv[0], *argv[1:]]
    return argv


@main_entry
def main(argv: Sequence[str] | None = None) -> str | None:
    args = _move_positional(list(sys.argv[1:] if argv is None else argv))
    push_args, hub_args = parse_args([PushArguments, HubArguments], args)
    setup_logging()
    # Imported after parsing so that --help and flag errors stay fast.
    from hfssl.hub import push_output_dir, validate_repo_id, write_model_card

    if push_args.card_only:
        repo_id = validate_repo_id(hub_args.hub_model_id) if hub_args.hub_model_id else None
        path = write_model_card(push_args.output_dir, repo_id=repo_id, license=push_args.license,
                                language=push_args.languages())
        print(path)
        return path
    hub_args.push_to_hub = True
    url = push_output_dir(push_args.output_dir, hub_args, commit_message=push_args.commit_message,
                          include_checkpoints=push_args.include_checkpoints, license=push_args.license,
                          language=push_args.languages())
    print(str(url))
    return str(url)


if __name__ == "__main__":
    # Usage and error lines name the command as it is typed, not "push.py".
    sys.argv[0] = "python -m hfssl.push"
    main()
