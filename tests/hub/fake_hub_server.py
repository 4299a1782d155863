"""A small Hugging Face Hub look-alike for tests (standard library only).

It speaks the part of the Hub HTTP API that ``huggingface_hub`` 2.x uses to create a repo, commit
files (regular files inline, large/binary files through the git-LFS batch API) and download them
again (``resolve`` with ETag / X-Repo-Commit / X-Linked-* headers and a redirect to a signed
"CDN" URL on another origin, as on the real Hub). Xet is not spoken: clients must run with
``HF_HUB_DISABLE_XET=1``.

Run: ``python fake_hub_server.py --root DIR --token alice=SECRET [--token bob=OTHER]``. It binds a free
port on 127.0.0.1 and writes ``DIR/port`` once it listens. Every request is appended to
``DIR/requests.jsonl`` (method, path, user; never the token) so tests can assert what was asked.
Repos live in memory; blobs under ``DIR/blobs``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".png", ".jpg", ".gz", ".model", ".npy")
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubState:
    """All repos, their commits and branches. One lock: the server is tiny and tests are small."""

    def __init__(self, root: Path, tokens: dict[str, str]) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tokens = tokens  # token -> user
        self.repos: dict[tuple[str, str], dict] = {}  # (type, repo_id) -> repo
        self.lock = threading.RLock()
        self.secret = secrets.token_bytes(16)

    # ----- blobs (content addressed by sha256) -----
    def put_blob(self, data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        path = self.blobs / oid
        if not path.exists():
            path.write_bytes(data)
        return oid

    def has_blob(self, oid: str) -> bool:
        return re.fullmatch(r"[0-9a-f]{64}", oid) is not None and (self.blobs / oid).exists()

    def read_blob(self, oid: str) -> bytes:
        return (self.blobs / oid).read_bytes()

    def sign(self, oid: str) -> str:
        return hmac.new(self.secret, oid.encode(), hashlib.sha256).hexdigest()

    # ----- repos -----
    def create_repo(self, repo_type: str, repo_id: str, owner: str, private: bool) -> dict:
        repo = {"id": repo_id, "type": repo_type, "owner": owner, "private": private, "commits": {},
                "branches": {}, "created": time.time()}
        self.repos[(repo_type, repo_id)] = repo
        self.commit(repo, "main", "initial commit", {".gitattributes": self.file_entry(_GITATTRIBUTES, False)},
                    author=owner)
        return repo

    def file_entry(self, data: bytes, lfs: bool) -> dict:
        return {"sha256": self.put_blob(data), "sha1": git_sha1(data), "size": len(data), "lfs": lfs}

    def commit(self, repo: dict, branch: str, title: str, files: dict, author: str, description: str = "") -> str:
        parent = repo["branches"].get(branch)
        oid = hashlib.sha1(f"{repo['id']}|{parent}|{title}|{time.time_ns()}|{sorted(files)}".encode()).hexdigest()
        repo["commits"][oid] = {"id": oid, "parent": parent, "title": title, "message": description,
                                "files": files, "author": author, "date": time.time()}
        repo["branches"][branch] = oid
        return oid

    def resolve_revision(self, repo: dict, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["commits"]:
            return revision
        return None


class HubHandler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1.0"
    protocol_version = "HTTP/1.1"

    @property
    def state(self) -> HubState:
        return self.server.state  # type: ignore[attr-defined]

    # ----- plumbing -----
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass  # requests are recorded in requests.jsonl instead

    def _record(self, status: int) -> None:
        entry = {"method": self.command, "path": urlsplit(self.path).path, "user": self._user(),
                 "auth": self.headers.get("Authorization") is not None, "status": status}
        with self.state.lock, open(self.state.root / "requests.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self.state.tokens.get(auth[len("Bearer "):])
        return None

    def _bad_token(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and self._user() is None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        extra = dict(headers or {})
        extra["X-Error-Message"] = message
        if code:
            extra["X-Error-Code"] = code
        self._json(status, {"error": message}, extra)

    def _base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # ----- access control (the Hub answers 401 to anonymous and 404 to others for hidden repos) -----
    def _readable_repo(self, repo_type: str, repo_id: str) -> dict | None:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is not None and (not repo["private"] or self._user() == repo["owner"]):
            return repo
        if self._user() is None:
            self._error(401, "Invalid username or password.", "RepoNotFound")
        else:
            self._error(404, "Repository not found", "RepoNotFound")
        return None

    def _writable_repo(self, repo_type: str, repo_id: str) -> dict | None:
        if self._bad_token():
            self._error(401, "Invalid credentials in Authorization header")
            return None
        repo = self._readable_repo(repo_type, repo_id)
        if repo is None:
            return None
        if self._user() != repo["owner"]:
            self._error(403, "You don't have the rights to write to this repo")
            return None
        return repo

    # ----- routing -----
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._route("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._route("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            with self.state.lock:
                self._dispatch(method, path, query, body)
        except Exception as exc:  # a bug in the fake must surface as a 500, not a hung client
            self._error(500, f"fake hub error: {type(exc).__name__}: {exc}")

    def _dispatch(self, method: str, path: str, query: dict, body: bytes) -> None:
        if self._bad_token() and not path.startswith("/_lfs"):
            self._error(401, "Invalid credentials in Authorization header")
            return
        if path == "/api/agent-harnesses" and method == "GET":
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})  # client telemetry registry
        if path == "/api/whoami-v2" and method == "GET":
            return self._whoami()
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if path.startswith("/_lfs_upload/") and method == "PUT":
            return self._lfs_put(path.rsplit("/", 1)[1], query, body)
        if path.startswith("/_lfs/") and method in ("GET", "HEAD"):
            return self._lfs_get(path.rsplit("/", 1)[1], query)
        m = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path)
        if m:
            return self._api(method, _REPO_TYPES[m.group(1)], m.group(2), m.group(3) or "", query, body)
        m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            return self._lfs_batch(_REPO_TYPES.get(f"{m.group(1)}", "model"), m.group(2), json.loads(body))
        m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            return self._resolve(_REPO_TYPES.get(f"{m.group(1)}", "model"), m.group(2), m.group(3), m.group(4))
        self._error(404, f"fake hub: no route for {method} {path}")

    # ----- account and repos -----
    def _whoami(self) -> None:
        user = self._user()
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        self._json(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def _create_repo(self, payload: dict) -> None:
        user = self._user()
        if user is None:
            return self._error(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or user
        if namespace != user:
            return self._error(403, f"You don't have the rights to create a repo under {namespace}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self._base()}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url},
                              {"X-Error-Message": "You already created this model repo"})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.state.create_repo(repo_type, repo_id, user, private)
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        if content.startswith("---") and "\n---" not in content[3:]:
            return self._json(400, {"errors": [{"message": "unterminated YAML front matter"}], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    # ----- /api/{type}s/{repo_id}/... -----
    def _api(self, method: str, repo_type: str, repo_id: str, rest: str, query: dict, body: bytes) -> None:
        if method == "POST":
            verb, _, revision = rest.partition("/")
            if verb == "preupload":
                return self._preupload(repo_type, repo_id, revision, json.loads(body))
            if verb == "commit":
                return self._commit(repo_type, repo_id, revision, body)
            if verb == "branch":
                return self._create_branch(repo_type, repo_id, revision, json.loads(body or b"{}"))
            if verb == "paths-info":
                return self._paths_info(repo_type, repo_id, revision, parse_qs(body.decode()))
        elif method in ("GET", "HEAD"):
            repo = self._readable_repo(repo_type, repo_id)
            if repo is None:
                return None
            if rest == "" or rest.startswith("revision/"):
                return self._repo_info(repo, rest.partition("/")[2] or "main")
            if rest.startswith("tree/"):
                revision, _, sub = rest[len("tree/"):].partition("/")
                return self._tree(repo, revision, sub, query.get("recursive", ["false"])[0] in ("true", "1", "True"))
            if rest.startswith("commits/"):
                return self._commits(repo, rest[len("commits/"):])
            if rest == "refs":
                return self._json(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                                                     for b, c in repo["branches"].items()],
                                        "tags": [], "converts": []})
        self._error(404, f"fake hub: no route for {method} /api/.../{rest}")

    def _revision_or_error(self, repo: dict, revision: str) -> str | None:
        oid = self.state.resolve_revision(repo, revision)
        if oid is None:
            self._error(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return oid

    def _repo_info(self, repo: dict, revision: str) -> None:
        oid = self._revision_or_error(repo, revision)
        if oid is None:
            return
        files = repo["commits"][oid]["files"]
        when = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(repo["commits"][oid]["date"]))
        self._json(200, {"_id": hashlib.md5(repo["id"].encode()).hexdigest()[:24], "id": repo["id"],
                         "modelId": repo["id"], "author": repo["owner"], "sha": oid, "private": repo["private"],
                         "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                         "lastModified": when, "createdAt": when,
                         "siblings": [{"rfilename": p} for p in sorted(files)]})

    def _entry_json(self, path: str, entry: dict) -> dict:
        out = {"type": "file", "oid": entry["sha1"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": 134}
        return out

    def _tree(self, repo: dict, revision: str, sub: str, recursive: bool) -> None:
        oid = self._revision_or_error(repo, revision)
        if oid is None:
            return
        sub = unquote(sub).strip("/")
        prefix = f"{sub}/" if sub else ""
        items, dirs = [], set()
        for path, entry in sorted(repo["commits"][oid]["files"].items()):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                items.append(self._entry_json(path, entry))
        if sub and not items and not dirs:
            return self._error(404, f"{sub} does not exist", "EntryNotFound")
        items += [{"type": "directory", "oid": git_sha1(d.encode()), "size": 0, "path": d} for d in sorted(dirs)]
        self._json(200, items)

    def _commits(self, repo: dict, revision: str) -> None:
        oid = self._revision_or_error(repo, revision)
        history = []
        while oid is not None:
            c = repo["commits"][oid]
            history.append({"id": c["id"], "title": c["title"], "message": c["message"],
                            "authors": [{"user": c["author"]}],
                            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(c["date"]))})
            oid = c["parent"]
        if history:
            self._json(200, history)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, form: dict) -> None:
        repo = self._readable_repo(repo_type, repo_id)
        if repo is None:
            return
        oid = self._revision_or_error(repo, revision)
        if oid is None:
            return
        files = repo["commits"][oid]["files"]
        self._json(200, [self._entry_json(p, files[p]) for p in form.get("paths", []) if p in files])

    def _create_branch(self, repo_type: str, repo_id: str, branch: str, payload: dict) -> None:
        repo = self._writable_repo(repo_type, repo_id)
        if repo is None:
            return
        branch = unquote(branch)
        if branch in repo["branches"]:
            return self._error(409, f"Reference already exists: refs/heads/{branch}")
        start = self.state.resolve_revision(repo, payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "Invalid starting point", "RevisionNotFound")
        repo["branches"][branch] = start
        self._json(200, {})

    # ----- uploads -----
    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> None:
        repo = self._writable_repo(repo_type, repo_id)
        if repo is None:
            return
        oid = self._revision_or_error(repo, revision)
        if oid is None:
            return
        files = repo["commits"][oid]["files"]
        out = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(_LFS_SUFFIXES) or b"\0" in sample or item["size"] > 10_000_000
            existing = files.get(item["path"])
            remote = None
            if existing is not None:
                remote = existing["sha256"] if lfs else existing["sha1"]
            out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": remote})
        self._json(200, {"files": out, "commitOid": oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict) -> None:
        repo = self._writable_repo(repo_type, repo_id)
        if repo is None:
            return
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.state.has_blob(obj["oid"]):
                href = f"{self._base()}/_lfs_upload/{obj['oid']}?sig={self.state.sign(obj['oid'])}"
                entry["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str, query: dict, body: bytes) -> None:
        if not hmac.compare_digest(query.get("sig", [""])[0], self.state.sign(oid)):
            return self._error(403, "bad upload signature")
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "uploaded content does not match its oid")
        self.state.put_blob(body)
        self._send(200, b"", content_type="text/plain")

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        repo = self._writable_repo(repo_type, repo_id)
        if repo is None:
            return
        branch = unquote(revision)
        if branch not in repo["branches"]:
            return self._error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "commit payload must start with a header")
        header = lines[0]["value"]
        head = repo["branches"][branch]
        if header.get("parentCommit") and header["parentCommit"] != head:
            return self._error(409, "A commit has happened since. Please refresh and try again.")
        files = dict(repo["commits"][head]["files"])
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            path = value["path"]
            if path.startswith("/") or ".." in path.split("/"):
                return self._error(400, f"invalid path {path!r}")
            if key == "file":
                files[path] = self.state.file_entry(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if not self.state.has_blob(value["oid"]):
                    return self._error(422, f"LFS object {value['oid']} was never uploaded")
                data = self.state.read_blob(value["oid"])
                files[path] = {"sha256": value["oid"], "sha1": git_sha1(data), "size": len(data), "lfs": True}
            elif key == "deletedFile":
                if path not in files:
                    return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                folder = path.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(folder)]:
                    del files[p]
            else:
                return self._error(400, f"unknown commit operation {key!r}")
        oid = self.state.commit(repo, branch, header.get("summary", ""), files, self._user() or "",
                                header.get("description", ""))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(200, {"success": True, "commitOid": oid,
                         "commitUrl": f"{self._base()}/{prefix}{repo_id}/commit/{oid}"})

    # ----- downloads -----
    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        repo = self._readable_repo(repo_type, repo_id)
        if repo is None:
            return
        oid = self._revision_or_error(repo, revision)
        if oid is None:
            return
        entry = repo["commits"][oid]["files"].get(unquote(filename))
        if entry is None:
            return self._error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": oid})
        headers = {"X-Repo-Commit": oid, "ETag": f'"{entry["sha1"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            # Like the Hub: LFS files redirect to a signed URL on another origin (the "CDN"); the metadata
            # travels on the redirect itself.
            port = self.server.server_address[1]
            location = f"http://localhost:{port}/_lfs/{entry['sha256']}?sig={self.state.sign(entry['sha256'])}"
            headers.update({"Location": location, "X-Linked-Etag": f'"{entry["sha256"]}"',
                            "X-Linked-Size": entry["size"]})
            return self._send(302, b"", headers)
        self._send(200, self.state.read_blob(entry["sha256"]), headers, content_type="application/octet-stream")

    def _lfs_get(self, oid: str, query: dict) -> None:
        if not hmac.compare_digest(query.get("sig", [""])[0], self.state.sign(oid)) or not self.state.has_blob(oid):
            return self._error(403, "Access denied")
        self._send(200, self.state.read_blob(oid), {"ETag": f'"{oid}"'}, content_type="application/octet-stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="State directory (blobs, request log, port file).")
    parser.add_argument("--token", action="append", default=[], help="USER=TOKEN, repeatable.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    tokens = {}
    for item in args.token:
        user, _, token = item.partition("=")
        tokens[token] = user
    server = ThreadingHTTPServer(("127.0.0.1", args.port), HubHandler)
    server.daemon_threads = True
    server.state = HubState(root, tokens)  # type: ignore[attr-defined]
    # Written atomically so the fixture never reads a half-written port.
    tmp = root / "port.tmp"
    tmp.write_text(str(server.server_address[1]))
    os.replace(tmp, root / "port")
    server.serve_forever()


if __name__ == "__main__":
    main()
