"""Run under torchrun: each rank iterates its StatefulLoader shard of a packed stream in lockstep with the other.

An all_reduce per batch means a rank with fewer batches would leave the other one waiting (the DDP hang
that equal batch counts prevent); the gloo timeout turns such a hang into a failure.
"""

import datetime
import json
import sys

import torch
import torch.distributed as dist
from transformers import AutoTokenizer

from hfssl.data import StatefulLoader, collate_fixed, load_documents, pack_clm


def main() -> None:
    corpus, tokenizer_dir, out_dir = sys.argv[1:4]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    blocks = pack_clm(load_documents(train_file=[corpus]), tokenizer, 32)
    loader = StatefulLoader(
        blocks,
        batch_size=3,
        collate_fn=collate_fixed,
        rank=rank,
        world_size=world,
        shuffle_buffer_size=16,
        seed=5,
    )
    mine = []
    steps = 0
    for batch in loader:
        mine.extend(batch["input_ids"].tolist())
        step = torch.ones(1)
        dist.all_reduce(step)  # both ranks must reach every step
        steps += 1
    with open(f"{out_dir}/rank{rank}.json", "w") as fh:
        json.dump({"rank": rank, "world_size": world, "steps": steps, "blocks": mine}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
