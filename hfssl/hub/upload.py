"""Push a run's output directory to the Hugging Face Hub.

The upload is an explicit allowlist (model weights as safetensors, config, tokenizer or image
processor, card, loss plot, metrics), built by walking ``output_dir`` ourselves rather than by
``upload_folder``'s glob, so that symlinks pointing outside the directory, pickled weights and
optimizer states can never slip into a commit. Everything goes up in one commit, so a failed push
leaves the remote as it was and can simply be re-run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hfssl.config import HubArguments
from hfssl.errors import ConfigError, HfsslError
from hfssl.hub.card import LOSS_PLOT, build_model_card, is_generated_card
from hfssl.logging import get_logger

logger = get_logger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload model trained with hfssl"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last-checkpoint"

# Top-level files a model repo needs; anything else in output_dir stays local.
_MODEL_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json",
    "README.md", LOSS_PLOT, "run_config.json", "metrics.jsonl", "all_results.json", "results.json",
    "eval_results.json", "train_results.json",
})
# A word2vec export (hfssl.models.word2vec, issue 14): the sentence-transformers files and the word2vec vectors;
# word2vec.bin is word2vec's raw float32 format, not a pickle.
_WORD2VEC_FILES = frozenset({"modules.json", "config_sentence_transformers.json", "word2vec.txt", "word2vec.bin"})
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
# Pickles execute code when loaded: hfssl never publishes model weights in these formats.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".jinja", ".yaml", ".yml", ".csv", ".log")
_STEP_DIR = re.compile(r"step_(\d+)")


class HubError(HfsslError):
    """A push to the Hub failed (network, authentication, permissions, conflicts)."""


@dataclass
class UploadPlan:
    """Files chosen for a push: ``(absolute local path, path in repo)`` pairs and what was skipped."""

    files: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def repo_paths(self) -> list[str]:
        return [p for _, p in self.files]


def validate_repo_id(repo_id: str | None) -> str:
    """Check ``repo_id`` is ``namespace/name`` as the Hub accepts it; no request is made."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hf_validate

    if not repo_id:
        raise ConfigError("--hub_model_id is required (e.g. --hub_model_id your-name/my-model)")
    if repo_id.count("/") != 1:
        raise ConfigError(f"--hub_model_id must be 'namespace/name' (e.g. your-name/my-model), got {repo_id!r}")
    try:
        hf_validate(repo_id)
    except HFValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"invalid --hub_model_id {repo_id!r}: {first}") from None
    return repo_id


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _safe_file(entry_path: str, root: str, plan: UploadPlan, rel: str) -> str | None:
    """Real path of a regular file that lives inside ``root``; anything else is skipped with a warning."""
    real = os.path.realpath(entry_path)
    if os.path.islink(entry_path) and not _inside(real, root):
        logger.warning("not uploading %s: it is a symlink to %s, outside the output directory", rel, real)
        plan.skipped.append(rel)
        return None
    if not os.path.isfile(real):
        plan.skipped.append(rel)
        return None
    return real


def _walk_tree(top: str, root: str, plan: UploadPlan, rel_prefix: str, repo_prefix: str) -> Iterator[tuple[str, str]]:
    """All regular files under ``top`` (symlinked directories are not followed)."""
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for d in list(dirnames):
            if d.startswith("."):  # a save in progress (.tmp-step_N) or tool state: never published
                dirnames.remove(d)
            elif os.path.islink(os.path.join(dirpath, d)):
                rel = os.path.relpath(os.path.join(dirpath, d), root)
                logger.warning("not uploading %s: symlinked directories are not followed", rel)
                plan.skipped.append(rel)
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel_in_top = os.path.relpath(full, top).replace(os.sep, "/")
            real = _safe_file(full, root, plan, f"{rel_prefix}/{rel_in_top}")
            if real is not None:
                yield real, f"{repo_prefix}/{rel_in_top}"


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoints/step_N`` folder (highest N), or None.

    Complete checkpoints (the loop writes ``trainer_state.json`` last) win over incomplete ones;
    ``.tmp-step_N`` folders of a save in progress never match.
    """
    ckpt_root = Path(output_dir) / CHECKPOINTS_DIR
    if not ckpt_root.is_dir():
        return None
    candidates = []
    for child in ckpt_root.iterdir():
        m = _STEP_DIR.fullmatch(child.name)
        if m and child.is_dir() and not child.is_symlink():
            complete = (child / "trainer_state.json").is_file()
            candidates.append((complete, int(m.group(1)), str(child)))
    return max(candidates)[2] if candidates else None


def plan_upload(output_dir: str, *, include_checkpoints: bool = False,
                include_last_checkpoint: bool = False) -> UploadPlan:
    """Decide what a push of ``output_dir`` uploads (no network)."""
    root = os.path.realpath(output_dir)
    plan = UploadPlan()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        name = entry.name
        if entry.is_dir(follow_symlinks=False):
            continue
        if entry.is_symlink() and os.path.isdir(entry.path):
            logger.warning("not uploading %s: symlinked directories are not followed", name)
            plan.skipped.append(name)
            continue
        if name.endswith(_PICKLE_SUFFIXES) and name not in _WORD2VEC_FILES:
            logger.warning("not uploading %s: pickle files are never pushed with the model (weights go as "
                           "safetensors)", name)
            plan.skipped.append(name)
            continue
        if name in _MODEL_FILES or name in _WORD2VEC_FILES or _SHARD.fullmatch(name):
            real = _safe_file(entry.path, root, plan, name)
            if real is not None:
                plan.files.append((real, name))
    ckpt_root = os.path.join(root, CHECKPOINTS_DIR)
    if include_checkpoints and os.path.islink(ckpt_root):
        logger.warning("not uploading %s: symlinked directories are not followed", CHECKPOINTS_DIR)
        plan.skipped.append(CHECKPOINTS_DIR)
    elif include_checkpoints and os.path.isdir(ckpt_root):
        plan.files += list(_walk_tree(ckpt_root, root, plan, CHECKPOINTS_DIR, CHECKPOINTS_DIR))
    if include_last_checkpoint:
        last = latest_checkpoint(root)
        if last is not None:
            rel = os.path.relpath(last, root)
            plan.files += list(_walk_tree(last, root, plan, rel, LAST_CHECKPOINT))
    return plan


def _check_pushable(output_dir: str, plan: UploadPlan) -> None:
    names = set(plan.repo_paths)
    has_weights = "model.safetensors" in names or "model.safetensors.index.json" in names
    if "config.json" not in names:
        raise HfsslError(f"nothing to push: {output_dir} has no config.json (is it a finished hfssl run?)")
    if not has_weights:
        pickles = [n for n in plan.skipped if n.endswith(_PICKLE_SUFFIXES)]
        if pickles:
            raise HfsslError(f"nothing to push: {output_dir} only has pickled weights ({', '.join(pickles)}); "
                             "re-save the model with save_pretrained(..., safe_serialization=True)")
        raise HfsslError(f"nothing to push: {output_dir} has no model.safetensors weights")


def _check_no_token_in_files(plan: UploadPlan, token: str | None) -> None:
    """Refuse to publish a file that contains the token (a config or log that captured it)."""
    if not token or len(token) < 8:
        return
    needle = token.encode()
    for local, repo_path in plan.files:
        if not repo_path.endswith(_TEXT_SUFFIXES) or os.path.getsize(local) > 50_000_000:
            continue
        with open(local, "rb") as fh:
            if needle in fh.read():
                raise HubError(f"refusing to push: {repo_path} contains your Hub token; remove it from the file "
                               "and run the push again")


def _scrub(text: str, token: str | None) -> str:
    first = (text.strip().splitlines() or [""])[0]
    return first.replace(token, "<token>") if token else first


def _rerun_hint(output_dir: str, repo_id: str) -> str:
    return f"re-run `python -m hfssl.push {output_dir} --hub_model_id {repo_id}` once fixed"


def _translate(exc: Exception, *, repo_id: str, output_dir: str, endpoint: str, token: str | None) -> HubError:
    """One actionable line for a failed Hub call; the token never appears in it."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    hint = _rerun_hint(output_dir, repo_id)
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"cannot push while HF_HUB_OFFLINE=1 is set; unset it and {hint}")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        server_message = exc.server_message or exc.response.headers.get("X-Error-Message") or ""
        detail = f": {_scrub(server_message, token)}" if server_message else ""
        if status == 401:
            return HubError(f"the Hub at {endpoint} rejected the credentials (HTTP 401){detail}; pass a valid "
                            f"--hub_token, set HF_TOKEN or run `hf auth login`, then {hint}")
        if status == 403:
            return HubError(f"no write access to {repo_id} (HTTP 403){detail}; use a token with write permission "
                            f"for that namespace, then {hint}")
        if status == 404:
            return HubError(f"{repo_id} or its branch was not found (HTTP 404){detail}; check --hub_model_id and "
                            f"--hub_revision, then {hint}")
        if status == 409:
            return HubError(f"conflict while pushing to {repo_id} (HTTP 409){detail}; another push may be "
                            f"running or the branch moved: {hint}")
        return HubError(f"the Hub at {endpoint} answered HTTP {status}{detail}; {hint}")
    if isinstance(exc, (httpx2.TransportError, OSError)):
        reason = _scrub(str(exc) or type(exc).__name__, token)
        return HubError(f"cannot reach the Hub at {endpoint} ({reason}); check your network or HF_ENDPOINT, "
                        f"then {hint}")
    if isinstance(exc, ValueError):
        return HubError(f"the Hub refused the upload of {repo_id}: {_scrub(str(exc), token)}")
    raise exc


def push_output_dir(output_dir: str, hub_args: HubArguments, *, commit_message: str = DEFAULT_COMMIT_MESSAGE,
                    include_checkpoints: bool = False, license: str | None = None,
                    language: str | list[str] | None = None) -> str:
    """Push a run's model, tokenizer/processor, card, metrics and loss plot to ``hub_args.hub_model_id``.

    ``hub_args.hub_strategy == "checkpoint"`` also uploads the newest ``checkpoints/step_N`` as
    ``last-checkpoint/`` (replacing the previous one) so training can resume from the Hub;
    ``include_checkpoints`` uploads the whole ``checkpoints/`` folder. ``end`` and ``every_save``
    push the same files: *when* to push is the training loop's call. ``license``/``language`` go on the
    regenerated card (defaults: the run's flags, else apache-2.0 / en for text). Returns the commit URL (a
    ``huggingface_hub.CommitInfo``, a ``str`` whose ``.oid`` is the commit id).
    """
    repo_id = validate_repo_id(hub_args.hub_model_id)
    if not os.path.isdir(output_dir):
        raise HfsslError(f"output directory {output_dir} does not exist (pass the --output_dir of a finished run)")
    last_checkpoint = hub_args.hub_strategy == "checkpoint"
    plan = plan_upload(output_dir, include_checkpoints=include_checkpoints, include_last_checkpoint=last_checkpoint)
    _check_pushable(output_dir, plan)
    with tempfile.TemporaryDirectory(prefix="hfssl-card-") as staging:
        # The card is staged outside the run and copied in only once the push succeeded, so a failed
        # push leaves output_dir exactly as it was.
        staged = _stage_card(output_dir, repo_id, staging, license=license, language=language)
        plan.files = [f for f in plan.files if f[1] not in staged] + [(src, name) for name, src in staged.items()]
        info = _commit(output_dir, repo_id, hub_args, plan, commit_message)
        for name, src in staged.items():
            tmp = os.path.join(output_dir, f".{name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, os.path.join(output_dir, name))
    logger.info("pushed %d files to %s (commit %s)", len(plan.files), repo_id, info.oid)
    return info


def _stage_card(output_dir: str, repo_id: str, staging: str, *, license: str | None = None,
                language: str | list[str] | None = None) -> dict[str, str]:
    """Regenerate README.md (+ loss plot) into ``staging`` unless the user wrote their own README."""
    readme = os.path.join(output_dir, "README.md")
    if os.path.exists(readme) and not is_generated_card(readme):
        logger.info("keeping the hand-written README.md in %s", output_dir)
        return {}
    plot = os.path.join(staging, LOSS_PLOT)
    card = build_model_card(output_dir, repo_id=repo_id, plot_path=plot, license=license, language=language)
    staged = {"README.md": os.path.join(staging, "README.md")}
    with open(staged["README.md"], "w", encoding="utf-8") as fh:
        fh.write(str(card))
    if os.path.isfile(plot):
        staged[LOSS_PLOT] = plot
    return staged


def _commit(output_dir: str, repo_id: str, hub_args: HubArguments, plan: UploadPlan, commit_message: str) -> str:
    """Create the repo (and branch) if needed and upload ``plan`` as one commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token

    token = hub_args.hub_token or get_token()
    _check_no_token_in_files(plan, token)
    endpoint = constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    revision = hub_args.hub_revision or None
    try:
        api.create_repo(repo_id, private=hub_args.hub_private_repo, exist_ok=True, repo_type="model")
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations: list = []
        fresh = set(plan.repo_paths)
        if any(p.startswith(f"{LAST_CHECKPOINT}/") for p in fresh):
            # Files of an older last-checkpoint/ that the new one lacks must go, or resume would mix states.
            remote = api.list_repo_files(repo_id, revision=revision, repo_type="model")
            operations += [CommitOperationDelete(path_in_repo=p) for p in remote
                           if p.startswith(f"{LAST_CHECKPOINT}/") and p not in fresh]
        operations += [CommitOperationAdd(path_in_repo=repo_path, path_or_fileobj=local)
                       for local, repo_path in plan.files]
        return api.create_commit(repo_id, operations=operations, commit_message=commit_message,
                                 revision=revision, repo_type="model")
    except Exception as exc:  # noqa: BLE001 - translated to one line or re-raised
        raise _translate(exc, repo_id=repo_id, output_dir=output_dir, endpoint=endpoint, token=token) from None
