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


# ----------------------------------------------------------------------------------- config files + flags
def test_config_file_then_flags_flags_win(tmp_path):
    (tmp_path / "c.yaml").write_text("output_dir: x\nmax_steps: 7\nlearning_rate: 1e-3\ntrain_file: data/*.txt\n"
                                     "strip_gutenberg: false\nlr_scheduler_kwargs: {num_decay_steps: 3}\n")
    model, data, train = parse_args((ModelArguments, DataArguments, TrainingArguments),
                                    [str(tmp_path / "c.yaml"), "--max_steps", "5", "--strip_gutenberg"])
    assert train.max_steps == 5 and data.strip_gutenberg  # the flags after the file win
    assert train.output_dir == "x" and data.train_file == ["data/*.txt"]  # a string is a one-element list
    assert train.learning_rate == 1e-3 and isinstance(train.learning_rate, float)  # YAML reads 1e-3 as a string
    assert json.loads(train.lr_scheduler_kwargs) == {"num_decay_steps": 3}  # a mapping becomes the JSON flag
    (tmp_path / "c.json").write_text(json.dumps({"train_file": "one.txt", "max_steps": 3}))
    _, data, train = parse_args((ModelArguments, DataArguments, TrainingArguments),
                                [str(tmp_path / "c.json"), "--train_file", "a.txt", "b.txt"])
    assert data.train_file == ["a.txt", "b.txt"] and train.max_steps == 3


def test_a_config_file_fills_required_fields(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"model_name_or_path": "m"}))
    (required,) = parse_args((_Required,), [str(tmp_path / "c.json")])
    assert required.model_name_or_path == "m"


@pytest.mark.parametrize(("content", "expected"), [
    ("max_stepz: 3\n", "c.yaml: unknown key 'max_stepz' (did you mean 'max_steps'?)"),
    ("max_steps: many\n", "c.yaml: max_steps must be an integer, got 'many'"),
    ("push_to_hub: maybe\n", "push_to_hub must be true or false, got 'maybe'"),
    ("max_steps: [1\n", "cannot read config file"),
    ("- 1\n- 2\n", "must hold flag names and values (a mapping), not a list"),
])
def test_bad_config_files_are_one_line(tmp_path, capsys, content, expected):
    (tmp_path / "c.yaml").write_text(content)
    err = _one_line_error(capsys, [str(tmp_path / "c.yaml")])
    assert expected in err


def test_unrecognized_flags_say_so_and_suggest(tmp_path, capsys):
    err = _one_line_error(capsys, ["--max_stepz", "3"])
    assert "unrecognized arguments: --max_stepz 3 (did you mean --max_steps?)" in err
    assert "HfArgumentParser" not in err
    (tmp_path / "c.yaml").write_text("max_steps: 3\n")
    err = _one_line_error(capsys, ["--max_steps", "3", str(tmp_path / "c.yaml")])
    assert "a config file must be the first argument" in err


def test_no_flag_of_a_true_boolean_says_what_it_does(capsys):
    with pytest.raises(SystemExit):
        parse_args((DataArguments,), ["--help"])
    out = capsys.readouterr().out
    help_of_no_flag = " ".join(out.split("--no_strip_gutenberg, --no-strip-gutenberg")[1].split("\n  -")[0].split())
    assert help_of_no_flag == "Turn off --strip_gutenberg (on by default)."
    assert "config.yaml --max_steps 5" in out  # the epilog tells how config files and flags combine
    _, data = parse_args((ModelArguments, DataArguments), ["--no_strip_gutenberg"])
    assert data.strip_gutenberg is False


# ----------------------------------------------------------------------------------- values checked at parse time
def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    err = _one_line_error(capsys, ["--output_dir", str(tmp_path / "f.txt")])
    assert "is a file, not a directory" in err
    err = _one_line_error(capsys, ["--output_dir", str(tmp_path / "f.txt" / "sub")])
    assert f"cannot be created: {tmp_path / 'f.txt'} is a file" in err


@pytest.mark.parametrize("value", ["0", "-5"])
def test_zero_or_negative_max_steps_is_one_line(capsys, value):
    err = _one_line_error(capsys, ["--max_steps", value])
    assert f"--max_steps must be a positive number of optimizer steps, got {value}" in err


def test_validation_split_percentage_range(capsys):
    err = _one_line_error(capsys, ["--validation_split_percentage", "100"])
    assert "--validation_split_percentage must be in [0, 100)" in err


def test_a_runs_run_config_json_reruns_it(tmp_path):
    from hfssl.run_info import write_run_info

    model, data, train = parse_args((ModelArguments, DataArguments, TrainingArguments),
                                    ["--output_dir", str(tmp_path / "run"), "--max_steps", "9", "--train_file", "a.txt"])
    write_run_info(str(tmp_path), model, data, train)
    _, data, train = parse_args((ModelArguments, DataArguments, TrainingArguments),
                                [str(tmp_path / "run_config.json"), "--output_dir", str(tmp_path / "again")])
    assert (train.max_steps, data.train_file, train.output_dir) == (9, ["a.txt"], str(tmp_path / "again"))
