"""git sources with GitPython: a cached clone per app, fetched again on each sync, checked out per release.

Credentials reach git only through the environment of an askpass helper, for this one fetch: they
are never in a URL that is kept, never in argv, never stored, never logged. Only the transports of
the contract are allowed (`GIT_ALLOW_PROTOCOL`), so `ext::` and friends cannot run commands.
"""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berthd.server.redaction import without_credentials

ALLOWED_PROTOCOLS = "http:https:ssh:git:file"
SCHEMES = ("http", "https", "ssh", "git", "file")
SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/][^\s]*\Z")
ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$BERTH_GIT_USERNAME" ;;
  *) printf '%s\\n' "$BERTH_GIT_PASSWORD" ;;
esac
"""


AT_AFTER_HOST = (
    "invalid repository URL: an '@' after the host; a user or password holding '/', '?', '#', '@' or a "
    "blank must be percent-encoded (or given with --username/--password)"
)


class GitError(ValueError):
    pass


@dataclass(frozen=True)
class Repository:
    url: str  # as given to git, without credentials
    shown: str  # as kept and shown
    username: str | None
    password: str | None
    upload_pack: str | None = None  # how git reads a local repository (as the caller: `caller.upload_pack`)


def check_repository(url: str, username: str | None, password: str | None) -> Repository:
    if any(c.isspace() for c in url):  # not quoted: a password may be what holds the blank
        raise GitError("invalid repository URL: it contains a blank or a control character")
    if not url or url.startswith("-") or "::" in url.split("/", 1)[0]:
        raise GitError(f"invalid repository URL {without_credentials(url)!r}")
    if SCP_LIKE.match(url):
        return Repository(url, url, username, password)
    if url.startswith("/"):  # a path on this host, as git takes one: read as a file:// URL is
        return Repository("file://" + urllib.parse.quote(os.path.normpath(url)), url, username, password)
    if not urllib.parse.urlsplit(url).scheme and ":" not in url:
        raise GitError(f"invalid repository {url!r}: a repository on this host needs an absolute path")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file" and parts.netloc and "@" in url.partition(parts.netloc)[2]:
        raise GitError(AT_AFTER_HOST)
    if parts.scheme not in SCHEMES:
        raise GitError(
            f"unsupported repository URL scheme {parts.scheme or 'none'!r}: use {', '.join(SCHEMES)}"
        )
    if parts.scheme != "file" and not parts.hostname:
        raise GitError(f"no host in repository URL {without_credentials(url)!r}")
    if parts.username or parts.password:
        username = username or urllib.parse.unquote(parts.username or "") or None
        password = password or urllib.parse.unquote(parts.password or "") or None
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    clean = urllib.parse.urlunsplit(parts)
    return Repository(clean, clean, username, password)


def git_environment(askpass: Path, repository: Repository, home: Path | None) -> dict[str, str]:
    """The environment of one fetch. `home` is None for a root caller, who may use root's own git and
    ssh set-up; any other caller gets an empty home of berthd's, so root's ~/.gitconfig (credential
    helpers, url rewrites), ~/.netrc, ssh keys, ssh agent and ssh config never act for someone else."""
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
        "GIT_ASKPASS": str(askpass),
        "SSH_ASKPASS": str(askpass),
        "GIT_CONFIG_NOSYSTEM": "1",
        "BERTH_GIT_USERNAME": repository.username or "",
        "BERTH_GIT_PASSWORD": repository.password or "",
    }
    if home is not None:
        ssh[1:1] = ["-F", os.devnull, "-o", "IdentityFile=none", "-o", "IdentityAgent=none",
                    "-o", f"UserKnownHostsFile={home / 'known_hosts'}"]  # fmt: skip
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            GIT_CONFIG_GLOBAL=os.devnull,
            SSH_AUTH_SOCK="",
        )
    env["GIT_SSH_COMMAND"] = " ".join(ssh)
    return env


def ensure_home(folder: Path) -> Path:
    """berthd's own empty home for the fetches of callers other than root (0700, root's)."""
    home = folder / "git-home"
    home.mkdir(mode=0o700, exist_ok=True)
    return home


def ensure_askpass(folder: Path) -> Path:
    path = folder / "git-askpass"
    if not path.exists() or path.read_text() != ASKPASS:
        temporary = folder / f".git-askpass.{os.getpid()}"
        temporary.write_text(ASKPASS)
        temporary.chmod(stat.S_IRWXU)
        os.replace(temporary, path)
    return path


def _describe(exc: Exception, repository: Repository) -> str:
    text = str(getattr(exc, "stderr", "") or exc).strip()
    text = text.replace(repository.password or "\0never\0", "***")
    lines = [line.strip().removeprefix("stderr: ").strip("'") for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if line.startswith(("fatal:", "error:", "remote:"))] or lines[-1:]
    return "; ".join(useful)[:500] or type(exc).__name__


def fetch(cache: Path, repository: Repository, env: dict[str, str]) -> None:
    """Clone the repository into `cache` (bare), or fetch what is new."""
    import git  # GitPython: imported when first needed, it is heavy

    if (
        repository.upload_pack
    ):  # for fetch and ls-remote: git's config, not an option to smuggle past GitPython
        env = {**env, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "remote.origin.uploadpack",
               "GIT_CONFIG_VALUE_0": repository.upload_pack}  # fmt: skip
    try:
        if (cache / "HEAD").exists():
            repo = git.Repo(cache)
            with repo.git.custom_environment(**env):
                repo.git.remote("set-url", "origin", repository.url)
                repo.git.fetch(
                    "--prune", "--prune-tags", "--tags", "--force", "origin", "+refs/heads/*:refs/heads/*"
                )
                # the default branch may have moved: HEAD follows the remote's
                for line in str(repo.git.ls_remote("--symref", "origin", "HEAD")).splitlines():
                    if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
                        repo.git.symbolic_ref("HEAD", line[5:].split("\t")[0])
        else:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # clone takes no remote config from the environment: the option, berthd's own command
            reader: dict[str, Any] = {"upload_pack": repository.upload_pack, "allow_unsafe_options": True}
            git.Repo.clone_from(
                repository.url, cache, bare=True, env=env, multi_options=["--no-hardlinks"],
                **(reader if repository.upload_pack else {}),
            )  # fmt: skip
    except (git.GitCommandError, git.exc.GitError, OSError) as exc:
        raise GitError(
            f"failed to clone repository {repository.shown}: {_describe(exc, repository)}"
        ) from None


def resolve(cache: Path, ref: str | None) -> tuple[str, str]:
    """The commit for a branch, a tag or a commit (the default branch when None); and what it was."""
    import git

    repo = git.Repo(cache)
    if ref is None:
        candidates = [("HEAD", "default branch")]
    else:
        candidates = [(f"refs/heads/{ref}", "branch"), (f"refs/tags/{ref}", "tag"), (ref, "commit")]
    for candidate, kind in candidates:
        try:
            commit = repo.git.rev_parse("--verify", "--quiet", f"{candidate}^{{commit}}")
        except git.GitCommandError:
            continue
        return commit.strip(), kind
    raise GitError(f"no branch, tag or commit {ref!r} in the repository")


def checkout(cache: Path, commit: str, target: Path) -> None:
    import git

    try:
        repo = git.Repo.clone_from(str(cache), target, no_checkout=True, shared=True)
        repo.git.checkout("--quiet", "--detach", commit)
    except git.GitCommandError as exc:
        raise GitError(f"cannot check out {commit[:12]}: {exc.stderr.strip()[:300]}") from None


def check_executable_in(checkout_dir: Path, executable: str) -> Path:
    """A path relative to the checkout that stays inside it and is an executable file."""
    if os.path.isabs(executable):
        raise GitError(f"invalid executable {executable!r}: give a path relative to the checkout")
    path = (checkout_dir / executable).resolve()
    if not path.is_relative_to(checkout_dir.resolve()):
        raise GitError(f"invalid executable {executable!r}: it leaves the checkout")
    if not path.is_file():
        raise GitError(f"invalid executable {executable!r}: no such file in the checkout")
    if not os.access(path, os.X_OK):
        raise GitError(f"invalid executable {executable!r}: permission denied")
    return path
