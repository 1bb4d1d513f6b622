"""Landing locations — a local folder (or one file) or `s3://bucket/prefix/` — and what they hold, by content.

A listing maps each file's URI to its sha256, its size and a stamp (mtime for local files, the
ETag for S3 objects). Given the previous listing, a file whose size and stamp did not change keeps
its hash without being read again, so a sensor can list a large landing folder every few seconds.

What counts as a change is content, not names: the same bytes under a new name, or seen again,
are `moved` and start nothing; new bytes are `arrived` (a new file) or `changed` (a new version
under a known name); bytes no longer anywhere in the landing are `withdrawn`.

S3 credentials and the endpoint come from the environment only (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), read by s3fs itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ft_assets.lib.storage import landing_files, s3_filesystem, sha256_file


def is_remote(location: str) -> bool:
    return location.startswith("s3://")


def list_landing(location: str, previous: dict[str, dict] | None = None) -> dict[str, dict]:
    """{uri: {"sha256", "bytes", "stamp"}} of every visible file (dotfiles skipped), sorted by URI.

    Raises:
        FileNotFoundError: a local landing path that does not exist.
    """
    previous = previous or {}
    listing = {}
    for uri, size, stamp, read in _files(location):
        known = previous.get(uri)
        if known is not None and known["bytes"] == size and known["stamp"] == stamp:
            sha = known["sha256"]
        else:
            sha = read()
        listing[uri] = {"sha256": sha, "bytes": size, "stamp": stamp}
    return dict(sorted(listing.items()))


def landing_changes(previous: dict[str, dict], current: dict[str, dict]) -> dict[str, list[dict]]:
    """What happened between two listings, by content: arrived, changed, moved, withdrawn."""
    before = {entry["sha256"] for entry in previous.values()}
    now = {entry["sha256"] for entry in current.values()}
    changes: dict[str, list[dict]] = {"arrived": [], "changed": [], "moved": [], "withdrawn": []}
    for uri, entry in current.items():
        old = previous.get(uri)
        if old is not None and old["sha256"] == entry["sha256"]:
            continue
        if entry["sha256"] in before:
            changes["moved"].append({"uri": uri, "sha256": entry["sha256"]})
        elif old is None:
            changes["arrived"].append({"uri": uri, "sha256": entry["sha256"]})
        else:
            changes["changed"].append({"uri": uri, "sha256": entry["sha256"], "previous_sha256": old["sha256"]})
    gone = before - now
    changes["withdrawn"] = [{"uri": uri, "sha256": e["sha256"]} for uri, e in previous.items() if e["sha256"] in gone]
    return changes


def needs_ingest(changes: dict[str, list[dict]]) -> bool:
    """New or withdrawn content changes what the corpus holds; a move alone does not."""
    return bool(changes["arrived"] or changes["changed"] or changes["withdrawn"])


@contextlib.contextmanager
def local_copies(location: str) -> Iterator[tuple[list[tuple[str, Path]], list[tuple[str, str]]]]:
    """((uri, local path) of every landing file in URI order, (uri, reason) of every entry refused).

    Local files are read where they are; S3 objects are downloaded into a temporary folder, removed
    afterwards, under names of our own (the URI stays s3://), so no key can write outside it.
    """
    if not is_remote(location):
        files, refused = landing_files(Path(location))
        yield ([(path.resolve().as_uri(), path) for path in files],
               [(path.absolute().as_uri(), reason) for path, reason in refused])
        return
    fs = s3_filesystem()
    objects, refused = _s3_objects(fs, location)
    with tempfile.TemporaryDirectory(prefix="ft_assets_landing_") as tmp:
        copies = []
        for i, (key, _) in enumerate(objects):
            local = Path(tmp) / f"{i:06d}_{Path(key).name}"
            fs.get_file(key, str(local))
            copies.append((f"s3://{key}", local))
        yield copies, refused


def _files(location: str):
    """(uri, bytes, stamp, read) per file, `read` returning its sha256 when called."""
    if not is_remote(location):
        for path in landing_files(Path(location))[0]:
            stat = path.stat()
            yield path.resolve().as_uri(), stat.st_size, str(stat.st_mtime_ns), lambda p=path: sha256_file(p)
        return
    fs = s3_filesystem()
    for key, info in _s3_objects(fs, location)[0]:
        yield f"s3://{key}", info["size"], str(info.get("ETag", "")), lambda k=key: _s3_sha256(fs, k)


def _s3_objects(fs, location: str) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """(key, info) of every visible object under the prefix, and (uri, reason) of the keys refused:
    `..` or empty segments, which would name a path outside the prefix on any file system."""
    prefix = location.removeprefix("s3://").rstrip("/")
    found = fs.find(prefix, detail=True)
    if not found and not fs.exists(prefix):
        raise FileNotFoundError(f"landing location {location} does not exist (no such bucket or prefix)")
    objects, refused = [], []
    for key, info in sorted(found.items()):
        parts = key[len(prefix):].lstrip("/").split("/")
        if info.get("type") == "directory" or any(part.startswith(".") and part != ".." for part in parts):
            continue
        if ".." in parts or "" in parts:
            refused.append((f"s3://{key}", "key with '..' or empty path segments"))
        else:
            objects.append((key, info))
    return objects, refused


def _s3_sha256(fs, key: str) -> str:
    with fs.open(key, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
