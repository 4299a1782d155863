"""Training throughput of hfssl's loop against the Hugging Face Trainer, per recipe.

    .venv/bin/python benchmarks/train_throughput.py --recipe gpt [--steps 10 --contenders hfssl,hf_trainer]
    .venv/bin/python benchmarks/train_throughput.py --recipe bert [...]
    .venv/bin/python benchmarks/train_throughput.py --recipe vit [...]   # SimMIM vs the run_mim.py Trainer path

Every other flag goes to ``benchmarks/_<recipe>_bench.py`` (see its --help). The last stdout line
is one JSON object with all figures and ratios.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RECIPES = ("gpt", "bert", "vit")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--recipe", choices=RECIPES, default="gpt")
    args, rest = parser.parse_known_args(argv)
    importlib.import_module(f"_{args.recipe}_bench").main(rest)


if __name__ == "__main__":
    main()
