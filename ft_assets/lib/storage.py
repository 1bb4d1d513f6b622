"""Files on disk: content hashes, landing-folder listings, and directories that appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def landing_files(path: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files a corpus reads — `path` itself, or every visible file under the folder, sorted — and
    the entries refused: symlinks that lead outside the landing folder (a landing folder is often
    writable by others; a link must not let them feed /etc/passwd or another team's data in).

    Raises:
        FileNotFoundError: the landing path does not exist.
    """
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise FileNotFoundError(f"landing path {path} does not exist")
    root = path.resolve()
    files, refused = [], []
    # Dotfiles (.gitkeep, editor swap files) are not data.
    for entry in sorted(path.rglob("*")):
        if any(part.startswith(".") for part in entry.relative_to(path).parts) or not entry.is_file():
            continue
        target = entry.resolve()
        if not target.is_relative_to(root):
            refused.append((entry, f"symlink to {target}, outside the landing folder {root}"))
        else:
            files.append(entry)
    return files, refused


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yields a staging directory beside `final`, renamed to `final` only if the block succeeds.

    A crash or exception leaves no directory at `final`, so nothing half-written is ever read
    as a checkpoint; the staging directory is removed.

    Raises:
        FileExistsError: `final` already exists (versions are never overwritten).
    """
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def require_writable(path: Path) -> None:
    """Raises OSError naming `path` when its folder exists and nothing can be written in it."""
    if not path.parent.is_dir():
        return
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise OSError(e.errno, f"{path}: cannot be written ({e.strerror})") from e


def publish_file(local_path: Path, remote_uri: str) -> None:
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).put_file(str(local_path), remote_uri.removeprefix("s3://"))


def publish_text(text: str, remote_uri: str) -> None:
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(remote_uri.removeprefix("s3://"), text.encode())


def publish_directory(local_dir: Path, remote_uri: str, last: str | None = None) -> None:
    """Copies a directory to s3://, file by file, with `last` (a relative path) uploaded after all the
    others: S3 has no directory rename, so a reader that waits for that file never sees a partial copy.
    Credentials and endpoint from the environment, as s3fs reads them."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    target = remote_uri.removeprefix("s3://").rstrip("/")
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    ordered = [p for p in files if p.relative_to(local_dir).as_posix() != last]
    ordered += [p for p in files if p.relative_to(local_dir).as_posix() == last]
    for path in ordered:
        fs.put_file(str(path), f"{target}/{path.relative_to(local_dir).as_posix()}")
