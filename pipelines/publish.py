"""Publish an export to the Hugging Face Hub: one commit, tagged with the dataset version; a tag is never moved.

`huggingface_hub` does the HTTP (regular files inline, parquet through LFS or Xet as the client decides);
this adds the version tag, the refusal to republish a version, and retries on 429/5xx and dropped connections.
A retried commit passes the head it started from (`parent_commit`), so a commit that landed before its answer
was lost is found again by its message instead of being made twice.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from schemas.errors import InputError, StateError, UserError, first_line

T = TypeVar("T")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubError(UserError):
    """The Hub refused or kept failing; the message names the repo and the reason."""

    exit_code = 8


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(e: BaseException) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _transient(e: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, HfHubHTTPError):
        return _status(e) in RETRY_STATUS
    if isinstance(e, OfflineModeIsEnabled):
        return False
    return isinstance(e, ConnectionError | TimeoutError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2") \
        and any(k in type(e).__name__ for k in ("Connect", "Timeout", "ReadError", "RemoteProtocol", "WriteError"))


def with_retries(call: Callable[[], T], what: str, attempts: int = 6, base: float = 0.5, cap: float = 20.0,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call, retrying transient failures with exponential backoff (or the server's Retry-After)."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - classified below
            if not _transient(e) or attempt == attempts:
                raise
            wait = _retry_after(e)
            sleep(min(cap, wait if wait is not None else base * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def read_export(folder: Path, version: str | None) -> tuple[str, str]:
    """(name, version) of an export folder; a folder not written by paradistill needs --version."""
    if not (folder / "README.md").is_file() or not any(folder.glob("data/*")):
        raise InputError(f"{folder}: not a dataset folder (needs README.md and data/); publish a folder written by "
                         "`paradistill export` (exports/NAME/VERSION)")
    meta_path = folder / "paradistill.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    version = version or meta.get("version")
    if not version:
        raise InputError(f"{folder}: no paradistill.json with a version; pass --version X.Y.Z")
    return meta.get("name") or folder.resolve().parent.name, version


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    found = token or os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise HubError("no Hub token: set HF_TOKEN or log in with `hf auth login`")
    return found


def _explain(e: BaseException, repo_id: str) -> HubError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return HubError(f"{repo_id}: HF_HUB_OFFLINE is set; unset it to publish")
    status = _status(e)
    if status == 401 or status == 403:
        return HubError(f"{repo_id}: the Hub refused the token ({status}); check HF_TOKEN has write access")
    if isinstance(e, HfHubHTTPError):
        return HubError(f"{repo_id}: the Hub answered {status}: {first_line(e)}")
    if _transient(e):
        return HubError(f"{repo_id}: cannot reach the Hub ({first_line(e)}); check the network or HF_ENDPOINT")
    return HubError(f"{repo_id}: publishing failed: {type(e).__name__}: {first_line(e)}")


def publish(export_dir: str | Path, repo_id: str, private: bool = False, version: str | None = None,
            token: str | None = None) -> dict:
    """Upload `export_dir` as one commit on main and tag it VERSION; refuses when the tag exists."""
    from huggingface_hub import HfApi

    folder = Path(export_dir)
    if not _REPO_ID.match(repo_id):
        raise InputError(f"--repo-id {repo_id!r}: expected OWNER/NAME")
    name, version = read_export(folder, version)
    api = HfApi(token=_token(token))
    title = f"paradistill: {name} {version}"
    try:
        with_retries(lambda: api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True),
                     "create repo")
        if private and not with_retries(lambda: api.dataset_info(repo_id), "repo info").private:
            raise StateError(f"{repo_id}: the repo exists and is public; --private does not change that (make it "
                             "private in its settings, or publish to another repo)")
        refs = with_retries(lambda: api.list_repo_refs(repo_id, repo_type="dataset"), "list refs")
        if any(t.name == version for t in refs.tags):
            raise StateError(f"{repo_id}: version {version} is already published (tag {version} exists) and is "
                             "never moved; export a new version and publish that")
        head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        commit = _commit(api, repo_id, folder, title, head)
        with_retries(lambda: _tag(api, repo_id, version, commit, title), "tag")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - every Hub failure becomes one line
        raise _explain(e, repo_id) from None
    endpoint = api.endpoint.rstrip("/")
    return {"repo_id": repo_id, "version": version, "commit": commit, "private": private,
            "url": f"{endpoint}/datasets/{repo_id}/tree/{version}"}


def _commit(api, repo_id: str, folder: Path, title: str, head: str | None) -> str:
    """upload_folder with retries. When a failed attempt finds our commit on main (its answer was lost, or a
    multi-part upload stopped half way), the next attempt uploads on top of it: a no-op when it was complete."""
    state = {"head": head}

    def attempt() -> str:
        try:
            info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                                     commit_message=title, parent_commit=state["head"], delete_patterns=["data/*"])
            return info.oid
        except Exception as e:
            if _status(e) == 412 or _transient(e):
                landed = _landed(api, repo_id, title, state["head"])
                if landed:
                    state["head"] = landed
                    raise _Again from e
            if _status(e) == 412:
                raise HubError(f"{repo_id}: main moved while uploading (someone else pushed); publish again") from None
            raise

    return with_retries(attempt, "upload")


class _Again(ConnectionError):
    """Our commit is on main: upload again on top of it (always retried)."""


def _landed(api, repo_id: str, title: str, head: str | None) -> str | None:
    """The newest commit on main if an earlier attempt made it (our title, or a "(part N)" of it), else None."""
    try:
        commits = api.list_repo_commits(repo_id, repo_type="dataset")
    except Exception:  # noqa: BLE001 - not knowing means: retry the upload
        return None
    if commits and commits[0].title.startswith(title) and commits[0].commit_id != head:
        return commits[0].commit_id
    return None


def _tag(api, repo_id: str, version: str, commit: str, title: str) -> None:
    """Tag `commit`; a tag that a lost answer already created on the same commit counts as done."""
    try:
        api.create_tag(repo_id, tag=version, revision=commit, repo_type="dataset", tag_message=title)
    except Exception as e:
        if _status(e) == 409:
            refs = api.list_repo_refs(repo_id, repo_type="dataset")
            if any(t.name == version and t.target_commit == commit for t in refs.tags):
                return
            raise StateError(f"{repo_id}: tag {version} appeared meanwhile on another commit; export a new "
                             "version") from None
        raise
