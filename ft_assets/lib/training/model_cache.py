"""s3:// base models, copied once into a local cache folder named by the sha256 of their bytes.

Training reads a local folder; the bucket stays the source of truth. A listing (keys, sizes,
ETags) seen before maps straight to its cached folder, so a re-run costs one LIST request and no
downloads. Folders are named by storage.folder_sha256 of their files (the model card aside), so two
URIs holding the same model share one copy, and a checkpoint's manifest records that same sha256 as
its base model's whichever URI the recipe names.

Credentials and the endpoint come from the environment only (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3): botocore
reads them itself when s3fs makes its client, so no secret passes through this module's
arguments, paths, messages or return values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ft_assets.lib.config import stable_hash
from ft_assets.lib.storage import folder_sha256, s3_filesystem

if TYPE_CHECKING:  # s3fs and botocore load when an s3:// model is fetched, not with the code location
    import s3fs

logger = logging.getLogger(__name__)

CACHE_ROOT_ENV = "FT_ASSETS_MODEL_CACHE"
INDEX_NAME = "index.json"

# Relative key -> (size in bytes, ETag): what the bucket says a model folder holds.
Listing = dict[str, tuple[int, str]]


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ROOT_ENV) or "~/.cache/ft_assets/models").expanduser()


def fetch_model(uri: str, cache_root: Path | None = None) -> Path:
    """The local copy of the save_pretrained folder at `uri`, downloaded only if its listing is new.

    Args:
        uri: `s3://bucket/prefix/`, a folder holding config.json, weights and tokenizer files.
        cache_root: where cached folders live; defaults to $FT_ASSETS_MODEL_CACHE, else
            ~/.cache/ft_assets/models.

    Returns:
        `<cache_root>/<sha256>/`, complete: a download that fails leaves nothing at that path.

    Raises:
        ValueError: `uri` is not an s3:// URI, carries credentials, or holds an object key that
            would land outside the folder (`..`, `.`, empty segments).
        FileNotFoundError: nothing under `uri`, or no config.json at its top level.
        PermissionError: credentials are missing or the store refused them.
        RuntimeError: objects under `uri` changed while they were being downloaded, or one
            could not be written whole (a key that is also a folder, `a` beside `a/b`).
    """
    bucket_path = _bucket_path(uri)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    fs = s3_filesystem()  # a re-upload is seen at once
    listing = _list_model(fs, uri, bucket_path)
    listing_key = _listing_key(bucket_path, listing)
    cached = _read_index(root).get(listing_key)
    if cached and (root / cached).is_dir():
        return root / cached
    sha = _download(fs, uri, bucket_path, listing, root)
    _record(root, listing_key, sha)
    return root / sha


def _bucket_path(uri: str) -> str:
    """`s3://bucket/a/b/` -> `bucket/a/b`, the form s3fs takes."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix/ URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if "@" in bucket:
        # Not echoed: the part before "@" would be the secret.
        raise ValueError("an s3:// URI must not carry credentials; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY in the environment instead")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return f"{bucket}/{prefix.strip('/')}".rstrip("/")


def _list_model(fs: s3fs.S3FileSystem, uri: str, bucket_path: str) -> Listing:
    with _explain_access_errors(uri):
        try:
            found = fs.find(bucket_path, detail=True)
        except FileNotFoundError as e:  # the bucket itself is missing
            raise FileNotFoundError(f"no objects under {uri}: {e}") from e
    listing = {}
    for name, info in found.items():
        if name.endswith("/") and info["size"] == 0:
            continue  # a "folder" marker, as the S3 console makes: no bytes to copy
        listing[_relative_key(name, bucket_path)] = (info["size"], info["ETag"])
    if not listing:
        raise FileNotFoundError(f"no objects under {uri}")
    if "config.json" not in listing:
        raise FileNotFoundError(f"{uri} has no config.json at its top level; point it at the "
                                "folder a save_pretrained call wrote")
    return listing


def _relative_key(name: str, bucket_path: str) -> str:
    """The key below the prefix, as a path that stays inside the folder it is downloaded into."""
    rel = name[len(bucket_path) + 1:] if name.startswith(bucket_path + "/") else ""
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"refusing object key {name!r}: it is not a plain file path below "
                         f"s3://{bucket_path}/ (no '..', '.' or empty segments)")
    return rel


@contextlib.contextmanager
def _explain_access_errors(uri: str) -> Iterator[None]:
    """Re-raises a missing-credentials or access-denied error with the URI and the fix.

    botocore's own message is kept in the chained error; it never holds the secret key.
    """
    from botocore.exceptions import NoCredentialsError

    try:
        yield
    except (NoCredentialsError, PermissionError) as e:
        raise PermissionError(
            f"cannot read {uri} ({type(e).__name__}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a store other than AWS) to an "
            "identity allowed s3:ListBucket and s3:GetObject on it"
        ) from e


def _listing_key(bucket_path: str, listing: Listing) -> str:
    return stable_hash([bucket_path, sorted(listing.items())])


def _download(fs: s3fs.S3FileSystem, uri: str, bucket_path: str, listing: Listing,
              root: Path) -> str:
    """Downloads into a staging folder inside `root`, renamed whole to `root/<sha256>`; returns the sha256."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        keys = sorted(listing)
        logger.info("downloading %d objects (%d bytes) from %s", len(keys),
                    sum(size for size, _ in listing.values()), uri)
        with _explain_access_errors(uri):
            fs.get([f"{bucket_path}/{key}" for key in keys], [str(staging / key) for key in keys])
        # s3fs skips an object whose key is also a folder prefix (`a` beside `a/b`): a local
        # folder cannot hold both, and the model would be cached without it.
        short = [key for key, (size, _) in listing.items()
                 if not (staging / key).is_file() or (staging / key).stat().st_size != size]
        if short:
            raise RuntimeError(f"objects under {uri} did not download whole: {short}")
        # The index maps this listing to these bytes; an upload that landed meanwhile could
        # have mixed two versions of the model into one folder.
        if _list_model(fs, uri, bucket_path) != listing:
            raise RuntimeError(f"objects under {uri} changed during the download; fetch again")
        sha = folder_sha256(staging)
        try:
            os.rename(staging, root / sha)
        except OSError:
            # The same bytes are cached already (another URI, or a concurrent fetch): keep those.
            if not (root / sha).is_dir():
                raise
        return sha
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_index(root: Path) -> dict[str, str]:
    path = root / INDEX_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def _record(root: Path, listing_key: str, sha: str) -> None:
    """Adds one entry to the index, replaced whole so a reader never sees half a file.

    Two fetches writing at once may drop each other's entry: that costs a download later,
    never a wrong folder, since entries are only written once their folder is in place.
    """
    index = _read_index(root)
    index[listing_key] = sha
    tmp = root / f".{INDEX_NAME}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, root / INDEX_NAME)


def local_copy(path: str, uri: str | None) -> Path:
    """A published directory on local disk: where it was written, else fetched from its s3:// copy
    (another machine wrote it) into the model cache."""
    if Path(path).exists() or uri is None:
        return Path(path)
    return fetch_model(uri)
