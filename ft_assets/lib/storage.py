"""Files on disk and in s3://: content hashes, landing-folder listings, directories that appear whole or not at
all, and copies of them published under an s3:// storage root."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ft_assets.lib.config import ProjectConfig


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# Files that describe a model folder rather than define it: our manifest (it cannot hold its own hash)
# and the model card (rewritten with the test results after training; a hub model's README).
DESCRIPTIVE_FILES = frozenset({"manifest.json", "README.md"})


def file_sha256s(folder: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `folder` but the descriptive ones, in path order."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in DESCRIPTIVE_FILES
    }


def folder_sha256(folder: Path) -> str:
    """The one digest of a model folder, wherever it came from: sha256 over each file's relative path and
    sha256 (file_sha256s), in path order. The model cache names an s3:// model's folder by it, a
    manifest records its base model's by it, and a checkpoint's own is that of its manifest's `files`."""
    return hashlib.sha256(
        "".join(f"{rel}\0{sha}\n" for rel, sha in sorted(file_sha256s(folder).items())).encode()
    ).hexdigest()


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
def atomic_directory(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yields a staging directory beside `final`, renamed to `final` only if the block succeeds.

    A crash or exception leaves `final` as it was, so nothing half-written is ever read as a
    checkpoint or a champion; the staging directory is removed. With `replace`, a `final` that
    exists is moved aside just before the rename and deleted after it: readers see the old folder
    or the new one, never a mix.

    Raises:
        FileExistsError: `final` already exists and replace is off (versions are never overwritten).
    """
    if final.exists() and not replace:
        raise FileExistsError(f"{final} already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    retired = final.parent / f".{final.name}.retired-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if final.exists():
            os.replace(final, retired)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def remove_partials(folder: Path) -> list[Path]:
    """Deletes the staging directories that atomic_directory left in `folder` when its process was
    killed (never renamed into place, so never read); returns them. Call it where one writer works at
    a time (the runs of one asset queue on its pool)."""
    partials = sorted(folder.glob(".*.partial-*")) if folder.is_dir() else []
    for partial in partials:
        shutil.rmtree(partial, ignore_errors=True)
    return partials


def require_storage_root(root: Path) -> None:
    """Raises NotADirectoryError when the local storage root, or a folder above it, is a file."""
    if blocking := next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None):
        raise NotADirectoryError(f"{blocking} is a file, not a folder: the storage root (storage.root in the "
                                 "project YAML, or FT_ASSETS_ROOT) must be a folder, or a path where one can be "
                                 f"made ({root})")


def require_writable(path: Path) -> None:
    """Raises OSError naming `path` when its folder exists and nothing can be written in it."""
    if not path.parent.is_dir():
        return
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise OSError(e.errno, f"{path}: cannot be written ({e.strerror})") from e


def s3_filesystem():
    """An S3 client as every s3:// read and write here uses: credentials and endpoint from the AWS_*
    variables, read afresh (no instance cache), and no listings cache, so what a call sees is the bucket
    as it is now (a re-upload, a new landing file)."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def publish_file(local_path: Path, remote_uri: str) -> None:
    s3_filesystem().put_file(str(local_path), remote_uri.removeprefix("s3://"))


def publish_text(text: str, remote_uri: str) -> None:
    s3_filesystem().pipe_file(remote_uri.removeprefix("s3://"), text.encode())


def publish_directory(local_dir: Path, remote_uri: str, last: str | None = None) -> None:
    """Copies a directory to s3://, file by file, with `last` (a relative path) uploaded after all the
    others: S3 has no directory rename, so a reader that waits for that file never sees a partial copy.
    Credentials and endpoint from the environment, as s3fs reads them."""
    fs = s3_filesystem()
    target = remote_uri.removeprefix("s3://").rstrip("/")
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    ordered = [p for p in files if p.relative_to(local_dir).as_posix() != last]
    ordered += [p for p in files if p.relative_to(local_dir).as_posix() == last]
    for path in ordered:
        fs.put_file(str(path), f"{target}/{path.relative_to(local_dir).as_posix()}")


def publish(config: ProjectConfig, local_path: Path, last: str | None = None) -> dict:
    """Mirrors a file or directory under the local root to the s3:// storage root, if there is one.

    Returns:
        {"published_uri": the s3:// URI} for the materialization's metadata; empty for a local root.
    """
    uri = config.remote_uri(local_path)
    if uri is None:
        return {}
    if local_path.is_dir():
        publish_directory(local_path, uri, last)
    else:
        publish_file(local_path, uri)
    return {"published_uri": uri}
