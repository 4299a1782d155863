import json
from dataclasses import dataclass, field

import pytest

from hfssl.cli import main_entry, parse_args
from hfssl.config import DataArguments, ModelArguments, TrainingArguments
from hfssl.errors import DataError


@dataclass
class _Required:
    model_name_or_path: str = field(metadata={"help": "required"})


def _one_line_error(capsys, argv, types=(ModelArguments, DataArguments, TrainingArguments)):
    with pytest.raises(SystemExit) as exc:
        parse_args(types, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_hf_flag_names_parse():
    model, data, train = parse_args(
        (ModelArguments, DataArguments, TrainingArguments),
        ["--output_dir", "o", "--max_steps", "3", "--per_device_train_batch_size", "4",
         "--learning_rate", "1e-3", "--train_file", "a.txt", "b.txt", "--push_to_hub", "--hub_model_id", "u/m"],
    )
    assert train.max_steps == 3 and train.learning_rate == 1e-3 and train.push_to_hub
    assert data.train_file == ["a.txt", "b.txt"]
    assert model.model_size == "tiny"


def test_unknown_flag_is_one_line(capsys):
    err = _one_line_error(capsys, ["--max_stepz", "3"])
    assert "--max_stepz" in err


def test_bad_choice_value_is_one_line(capsys):
    err = _one_line_error(capsys, ["--mixed_precision", "fp8"])
    assert "--mixed_precision" in err


def test_missing_required_is_one_line(capsys):
    err = _one_line_error(capsys, [], types=(_Required,))
    assert "--model_name_or_path" in err


def test_push_without_repo_id(capsys):
    err = _one_line_error(capsys, ["--push_to_hub"])
    assert "--hub_model_id" in err


def test_json_and_yaml_config(tmp_path):
    cfg = {"output_dir": "x", "max_steps": 7, "model_size": "mini", "train_file": ["f.txt"]}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    (tmp_path / "c.yaml").write_text("output_dir: x\nmax_steps: 7\nmodel_size: mini\ntrain_file: [f.txt]\n")
    for name in ("c.json", "c.yaml"):
        model, data, train = parse_args((ModelArguments, DataArguments, TrainingArguments), [str(tmp_path / name)])
        assert (train.max_steps, model.model_size, data.train_file) == (7, "mini", ["f.txt"])


def test_config_file_with_unknown_key(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"max_stepz": 1}))
    err = _one_line_error(capsys, [str(tmp_path / "c.json")])
    assert "max_stepz" in err


def test_main_entry_turns_user_errors_into_one_line(capsys):
    @main_entry
    def main():
        raise DataError("no such file: corpus.txt")

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().endswith("error: no such file: corpus.txt") and err.count("\n") == 1
