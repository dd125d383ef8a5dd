"""Upload a verified release folder to the Hub in ONE commit (`huggingface_hub`).

One commit means a repo is never seen half-updated: weights from one release and a bank from another would
vote with meaningless neighbours. The commit message says what was released; `revision` puts it on a branch
(created if needed), `tag` names the resulting commit.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

from .verify import folder_files


def commit_message(model_name: str, files: list[str]) -> tuple[str, str]:
    """The commit title and description: what the release holds."""
    kinds = []
    if "model.safetensors" in files:
        kinds.append("weights")
    if "feature_bank.safetensors" in files:
        kinds.append("feature bank")
    if "preprocessor_config.json" in files:
        kinds.append("processor")
    if any(name.endswith(".py") for name in files):
        kinds.append("remote code")
    if any(name.startswith("onnx/") for name in files):
        kinds.append("ONNX export")
    if "README.md" in files:
        kinds.append("model card")
    title = f"Release {model_name}: " + ", ".join(kinds)
    return title, "Files:\n" + "\n".join(f"- {name}" for name in files)


def upload_release(
    folder: Path,
    repo_id: str,
    *,
    revision: str | None = None,
    tag: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    api: HfApi | None = None,
) -> CommitInfo:
    """`create_repo(exist_ok=True)`, the branch if `revision` names one, one commit of every file, the tag."""
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    files = folder_files(Path(folder))
    title, description = commit_message(repo_id.split("/")[-1], list(files))
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
    commit = api.create_commit(
        repo_id,
        operations,
        commit_message=title,
        commit_description=description,
        revision=revision,
        repo_type="model",
    )
    if tag:
        api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type="model", tag_message=title)
    return commit


__all__ = ["commit_message", "upload_release"]
