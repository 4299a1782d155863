"""Per-rank memory and throughput of the training loop under DDP vs FSDP2, at 2 and 4 processes.

    python benchmarks/scale_out.py                       # base presets of GPT-2, BERT and ViT, 2 and 4 processes
    python benchmarks/scale_out.py --models gpt2 --world_sizes 2 --steps 3

Every contender is the real loop (``hfssl.training.loop.TrainingRun``: ObjectiveModule, AdamW, Accelerate's
``prepare``) launched with ``accelerate launch --config_file configs/accelerate/<engine>.yaml``. After a few
optimizer steps each rank counts the bytes it holds itself: parameters, gradients and optimizer state (for
FSDP2 the local shards of the DTensors). Under DDP every rank holds everything; FSDP2 should hold about 1/N.
Throughput is input tokens (patches for ViT) per second over the timed steps, summed over ranks.

On a CPU-only machine Accelerate enables FSDP only through the test shim (tests/helpers/fsdp_on_cpu), which
this benchmark puts on the path, as the tests do; CPU throughput says little about GPUs (gloo, 2 cores), the
memory split says exactly what it says anywhere. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {"gpt2": "gpt_clm", "bert": "bert_mlm", "vit": "vit_pretext"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,bert,vit")
    parser.add_argument("--engines", default="ddp,fsdp2")
    parser.add_argument("--world_sizes", default="2,4")
    parser.add_argument("--model_size", default="base")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=2, help="per process")
    parser.add_argument("--mixed_precision", default="no", help="no, bf16 (GPUs) or fp16")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up step)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ worker
def _local_bytes(tensors) -> int:
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total


def _build(model_name: str, args: argparse.Namespace):
    """(backbone, objective, batch factory) for one family at the chosen preset."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForPreTraining

    from hfssl.models.presets import build_config

    g = torch.Generator().manual_seed(0)
    if model_name == "gpt2":
        from hfssl.objectives.clm import CausalLMObjective

        config = build_config("gpt2", args.model_size, vocab_size=50304, max_position_embeddings=args.seq_len)
        model = AutoModelForCausalLM.from_config(config)

        def batch():
            return {"input_ids": torch.randint(0, 50304, (args.batch_size, args.seq_len), generator=g)}

        return model, CausalLMObjective(), batch
    if model_name == "bert":
        from hfssl.objectives.mlm import BertPretrainingObjective

        config = build_config("bert", args.model_size, vocab_size=30522, max_position_embeddings=512)
        model = AutoModelForPreTraining.from_config(config)
        objective = BertPretrainingObjective(mask_token_id=103, vocab_size=30522, special_token_ids=[0, 101, 102, 103])

        def batch():
            ids = torch.randint(1000, 30522, (args.batch_size, args.seq_len), generator=g)
            ids[:, 0], ids[:, -1] = 101, 102
            return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                    "attention_mask": torch.ones_like(ids), "next_sentence_label": torch.zeros(args.batch_size,
                                                                                               dtype=torch.long)}

        return model, objective, batch
    from hfssl.config import VisionModelArguments
    from hfssl.models.vision import build_vision_model
    from hfssl.objectives.vision import PRETEXT_TASKS, build_objective

    vision = VisionModelArguments(model_size=args.model_size, image_size=args.image_size, patch_size=16)
    model = build_vision_model(vision, PRETEXT_TASKS["mim"].model_class)
    objective = build_objective("mim", model.config, [0.5] * 3, [0.5] * 3)

    def batch():
        return {"pixel_values": torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size),
                                              generator=g, dtype=torch.uint8)}

    return model, objective, batch


def worker(args: argparse.Namespace) -> dict:
    import torch
    from accelerate.utils import gather_object

    from hfssl.config import TrainingArguments
    from hfssl.training.engines import engine_name
    from hfssl.training.loop import TrainingRun, make_accelerator

    out = os.environ["HFSSL_BENCH_OUT"]
    targs = TrainingArguments(output_dir=out, overwrite_output_dir=True, max_steps=10_000, learning_rate=1e-4,
                              per_device_train_batch_size=args.batch_size, checkpointing_steps=0, logging_steps=10_000,
                              report_to="none", seed=0)
    accelerator = make_accelerator(targs)
    model, objective, batch = _build(args.worker, args)
    loader = [batch() for _ in range(args.steps + 2)]
    run = TrainingRun(objective, model, loader, targs, None, None, (targs,), accelerator)
    run._train_step()  # warm-up: allocates gradients and optimizer state
    start = time.perf_counter()
    for _ in range(args.steps):
        run._train_step()
    accelerator.wait_for_everyone()
    elapsed = time.perf_counter() - start
    # One more (untimed) step that keeps its gradients, so they can be counted too.
    run.optimizer.zero_grad = lambda set_to_none=True: None
    run._train_step()
    params = list(run.module.parameters())
    state = [v for s in run.optimizer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    mine = {"params_mb": _local_bytes(params) / 2**20, "grads_mb": _local_bytes(p.grad for p in params) / 2**20,
            "optimizer_mb": _local_bytes(state) / 2**20}
    per_rank = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    tokens = sum(objective.input_tokens(b) for b in loader[1:-1]) * accelerator.num_processes
    result = {"per_rank": per_rank, "tokens_per_second": tokens / elapsed, "engine": engine_name(accelerator)}
    accelerator.end_training()
    # Freeing the DDP reducer destroys its gloo group, which can hang once other ranks have left (seen with 4
    # processes on 2 cores): keep everything alive until main() leaves with os._exit.
    _KEEP_ALIVE.append((run, accelerator))
    return result


_KEEP_ALIVE: list = []


# ------------------------------------------------------------------------------------------ parent
def contender(model_name: str, engine: str, world: int, args: argparse.Namespace, scratch: Path) -> dict:
    config = {"ddp": "ddp" if _has_gpu() else "cpu_2proc", "fsdp2": "fsdp2"}[engine]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "HFSSL_BENCH_OUT": str(scratch / f"{model_name}-{engine}-{world}")}
    if engine == "fsdp2" and not _has_gpu():
        env.update(HFSSL_TEST_FSDP_ON_CPU="1", PYTHONPATH=str(REPO / "tests" / "helpers" / "fsdp_on_cpu"))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / f"{config}.yaml"), "--num_processes", str(world),
               "--mixed_precision", args.mixed_precision, __file__, "--worker", model_name, "--model_size", args.model_size,
               "--seq_len", str(args.seq_len), "--image_size", str(args.image_size),
               "--batch_size", str(args.batch_size), "--steps", str(args.steps)]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    result = json.loads(lines[0])
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def run_all(argv: list[str] | None) -> dict:
    import tempfile

    args = parse(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="hfssl-scale-out-") as tmp:
        for model_name in args.models.split(","):
            for world in (int(w) for w in args.world_sizes.split(",")):
                for engine in args.engines.split(","):
                    key = f"{model_name}/{engine}/{world}"
                    results[key] = contender(model_name, engine, world, args, Path(tmp))
                    print(f"{key}: {_summary(results[key])}", file=sys.stderr, flush=True)
    ratios = {}
    for key, res in results.items():
        model_name, engine, world = key.split("/")
        ddp = results.get(f"{model_name}/ddp/{world}", {})
        if engine == "ddp" or "per_rank" not in res or "per_rank" not in ddp:
            continue
        total = _rank0_total(res)
        ratios[f"{model_name}/{world}/fsdp2_over_ddp_memory"] = round(total / _rank0_total(ddp), 3)
        ratios[f"{model_name}/{world}/fsdp2_over_ddp_throughput"] = round(
            res["tokens_per_second"] / ddp["tokens_per_second"], 3)
    return {"benchmark": "scale_out", "device": "cuda" if _has_gpu() else "cpu", "model_size": args.model_size,
            "batch_per_process": args.batch_size, "results": results, "ratios": ratios}


def _rank0_total(result: dict) -> float:
    first = result["per_rank"][0]
    return first["params_mb"] + first["grads_mb"] + first["optimizer_mb"]


def _summary(result: dict) -> str:
    if "per_rank" not in result:
        return str(result)
    first = result["per_rank"][0]
    return (f"rank 0 holds params {first['params_mb']:.0f} MB + grads {first['grads_mb']:.0f} MB + optimizer "
            f"{first['optimizer_mb']:.0f} MB; {result['tokens_per_second']:.0f} tokens/s")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not args.worker:
        print(json.dumps(run_all(argv)))
        return
    result = worker(args)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(result), flush=True)
    # Tearing down gloo groups after the others left has hung here once (4 processes on 2 cores): the figures
    # are out, leave without waiting for destructors.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
