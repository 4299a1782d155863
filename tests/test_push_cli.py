"""``python -m hfssl.push``: flags, one-line errors and the offline card-only mode (no Hub needed)."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.hub.hub_helpers import ALICE_TOKEN, hub_env, run_push_cli


@pytest.fixture
def minimal_run(tmp_path: Path) -> Path:
    """The smallest directory a push accepts: a config and safetensors weights."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    save_file({"wte.weight": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(out / "model.safetensors"))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n" for s in range(1, 6)))
    return out


def _snapshot(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _error_line(proc) -> str:
    assert proc.returncode in (1, 2), (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_help_lists_the_push_flags(tmp_path: Path) -> None:
    proc = run_push_cli(["--help"], hub_env("http://127.0.0.1:9", tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    for flag in ("--hub_model_id", "--hub_token", "--hub_private_repo", "--hub_revision", "--commit_message",
                 "--include_checkpoints", "--hub_strategy"):
        assert flag in proc.stdout


def test_unreachable_endpoint_is_one_line_and_leaves_the_run_alone(minimal_run: Path, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    before = _snapshot(minimal_run)
    proc = run_push_cli([str(minimal_run), "--hub_model_id", "alice/x", "--hub_token", ALICE_TOKEN],
                        hub_env(endpoint, tmp_path / "home"), timeout=90)
    line = _error_line(proc)
    assert proc.returncode == 1
    assert f"cannot reach the Hub at {endpoint}" in line and "hfssl.push" in line
    assert ALICE_TOKEN not in proc.stdout + proc.stderr
    assert _snapshot(minimal_run) == before  # not even a model card was left behind


def test_user_errors_are_one_line(minimal_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # In-process (each case is a full CLI run through main_entry, minus the interpreter start-up).
    from hfssl.push import main

    def fails(args: list[str]) -> str:
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code in (1, 2)
        lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        return lines[0]

    assert "does not exist" in fails([str(tmp_path / "nope"), "--hub_model_id", "alice/x"])
    assert "namespace/name" in fails([str(minimal_run), "--hub_model_id", "not-a-namespace"])
    assert "hub_model_id" in fails([str(minimal_run)])
    assert "--hub_strategy" in fails([str(minimal_run), "--hub_model_id", "alice/x", "--hub_strategy", "sometimes"])
    (minimal_run / "model.safetensors").unlink()
    assert "nothing to push" in fails([str(minimal_run), "--hub_model_id", "alice/x"])


def test_card_only_writes_the_card_offline(minimal_run: Path, tmp_path: Path) -> None:
    env = hub_env("http://127.0.0.1:9", tmp_path / "home") | {"HF_HUB_OFFLINE": "1"}
    proc = run_push_cli([str(minimal_run), "--card_only", "--hub_model_id", "alice/x"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(minimal_run / "README.md")
    text = (minimal_run / "README.md").read_text()
    assert text.startswith("---\n") and 'from_pretrained("alice/x")' in text
    assert "license: apache-2.0" in text and "language: en" in text
    assert (minimal_run / "loss_curve.png").is_file()
    proc = run_push_cli([str(minimal_run), "--card_only", "--license", "cc-by-4.0", "--language", "en, de"], env)
    assert proc.returncode == 0, proc.stderr
    header = (minimal_run / "README.md").read_text().split("---\n")[1]
    assert "license: cc-by-4.0" in header and "- en\n- de" in header


def test_card_only_refreshes_hfssl_cards_and_keeps_hand_written_ones(minimal_run: Path, capsys) -> None:
    from hfssl.hub.card import CARD_MARKER
    from hfssl.push import main

    # A card from an older hfssl (its marker line read "regenerated on push") is still hfssl's to refresh.
    (minimal_run / "README.md").write_text("# stale\n\n<!-- hfssl:model-card (regenerated on push; delete this "
                                           "line to keep manual edits) -->\n")
    assert main([str(minimal_run), "--card_only"]) == str(minimal_run / "README.md")
    text = (minimal_run / "README.md").read_text()
    assert "# stale" not in text and "# run" in text and CARD_MARKER in text
    (minimal_run / "README.md").write_text("# My own card\n")
    with pytest.raises(SystemExit) as exc:
        main([str(minimal_run), "--card_only"])
    assert exc.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "written by hand" in lines[0]
    assert (minimal_run / "README.md").read_text() == "# My own card\n"
