"""Lineage records: which raw files (by content hash) fed a dataset, and which code produced a model.

Also the two checks that read those records back: `code_version`, which ties each asset's Dagster
code version to the source of the modules that compute it, and `verify_checkpoint`, which re-hashes
a checkpoint directory and its raw files against its manifest.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import subprocess
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import duckdb

from ft_assets.lib.training.checkpoint import MANIFEST_FILE
from ft_assets.lib.storage import sha256_file


class AuditError(LookupError):
    """The Dagster instance holds no materialization for what an audit asked about."""

PACKAGE = "ft_assets"
# Where code_version reads the project's source (tests point it at an edited copy).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Files that from_pretrained could load as weights: one the manifest does not list was added later.
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt"})


def dataset_files(conn: duckdb.DuckDBPyConnection, dataset_name: str, corpora: list[str]) -> list[dict]:
    """Every raw file of the dataset's corpora: URI, sha256, records read, and rows per split.

    Files whose rows were all quarantined or duplicates are listed too, with zero rows per split:
    the model did not learn from them, but they were part of what it was built from.
    """
    files = " UNION ALL ".join(f'SELECT * FROM raw."{c}__files"' for c in corpora)
    rows = conn.sql(f"""
        SELECT f.source_uri, f.file_sha256, f.rows + f.rejects,
               count(d.row_id) FILTER (WHERE d.split = 'train'),
               count(d.row_id) FILTER (WHERE d.split = 'validation'),
               count(d.row_id) FILTER (WHERE d.split = 'test')
        FROM ({files}) f
        LEFT JOIN datasets."{dataset_name}" d USING (source_uri, file_sha256)
        GROUP BY ALL ORDER BY f.source_uri
    """).fetchall()
    return [
        {"uri": uri, "sha256": sha, "records": n, "rows": {"train": tr, "validation": va, "test": te}}
        for uri, sha, n, tr, va, te in rows
    ]


def git_state(path: Path) -> dict:
    """The commit of the repository holding `path`, and whether its work tree had changes."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha or "unknown", "dirty": bool(status) if status is not None else None}


def project_modules(entry: str) -> list[str]:
    """Every ft_assets module that running `entry` (a dotted module name) can import, entry included:
    the whole stage package it belongs to (ft_assets.lib.training, ...), and what those import.

    Read from the source rather than from an import: imports inside functions count too (they load
    when that code runs, as lib modules import torch lazily), and loading the code location stays light.
    Packages on the way (ft_assets, ft_assets.lib, ...) count, since importing a module runs them, with
    what their module-level code imports: their functions run only when called (ft_assets.__getattr__
    imports the Dagster component for a defs.yaml, never for training).
    """
    whole = {entry}
    stage = entry.split(".")[:3]  # ft_assets.lib.<stage>
    if len(entry.split(".")) > 3 and _module_path(".".join(stage)).name == "__init__.py":
        package = _module_path(".".join(stage)).parent
        whole |= {".".join(stage + [path.stem]) for path in package.glob("*.py") if path.stem != "__init__"}
    found: dict[str, bool] = {}  # module -> whether the imports inside its functions were followed
    pending = [(module, True) for module in whole]
    while pending:
        module, with_functions = pending.pop()
        if module in found and (found[module] or not with_functions):
            continue
        found[module] = with_functions
        parts = module.split(".")
        pending += [(".".join(parts[:i]), False) for i in range(1, len(parts))]
        tree = ast.parse(_module_path(module).read_bytes())
        is_package = _module_path(module).name == "__init__.py"
        for node in ast.walk(tree) if with_functions else _module_level_nodes(tree):
            if isinstance(node, ast.Import):
                pending += [(a.name, True) for a in node.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    anchor = parts if is_package else parts[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                if base.split(".")[0] != PACKAGE:
                    continue
                pending.append((base, True))
                # `from ft_assets.lib.training import loop` imports a module; `... .loop import fit` a name.
                pending += [(f"{base}.{a.name}", True) for a in node.names if _is_module(f"{base}.{a.name}")]
    return sorted(found)


def _module_level_nodes(tree: ast.Module):
    """The nodes that run when the module is imported: all but what is inside its functions."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def source_hash(*entries: str) -> str:
    """sha256 of the source bytes of every project module the entries (dotted names) can import."""
    return _source_hash(PACKAGE_DIR, entries)


@functools.lru_cache(maxsize=None)
def _source_hash(package_dir: Path, entries: tuple[str, ...]) -> str:
    # Once per process and package folder: every recipe's assets share their entries, and reading and
    # parsing the modules again for each was most of the code location's load time. A process sees one
    # version of the source; a reload is a new process.
    digest = hashlib.sha256()
    for module in sorted(set().union(*(project_modules(e) for e in entries))):
        digest.update(f"{module}\n".encode())
        digest.update(_module_path(module).read_bytes())
    return digest.hexdigest()


def code_version(settings_hash: str, *entries: str) -> str:
    """An asset's Dagster code_version: its settings' hash and the source of the code that computes it,
    which is the entry modules and everything of this project they import (project_modules).

    Dagster marks an asset stale when its code_version differs from the one its latest materialization
    recorded, so editing e.g. cleaning.py flags every dataset, and editing a recipe flags only that
    recipe's assets. Source bytes, not Python's hash(), so every process agrees.
    """
    return hashlib.sha256((settings_hash + source_hash(*entries)).encode()).hexdigest()[:12]


def _module_path(module: str) -> Path:
    path = PACKAGE_DIR.parent.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(module: str) -> bool:
    return _module_path(module).is_file()


def verify_checkpoint(checkpoint_dir: Path) -> dict:
    """Re-hashes a checkpoint's files and the raw files it learned from against its manifest.json.

    Returns:
        {"checkpoint", "ok", "problems", "files", "raw_files"}. Each entry of `files` and
        `raw_files` has path (uri for raw files), expected, actual (sha256 or None) and status:
        files: ok | mismatch | missing | unrecorded (a weight file the manifest does not list);
        raw_files: ok | drift (changed since training) | missing | not checked (remote).
        `ok` is false on any checkpoint file that is not ok, on raw drift, and for a manifest
        without file hashes; a deleted or remote raw file is listed but does not fail it, since
        the weights it produced are still the ones recorded.

    Raises:
        FileNotFoundError: the directory holds no manifest.json, so it is not a checkpoint.
    """
    manifest_path = checkpoint_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a checkpoint: it has no {MANIFEST_FILE}")
    manifest = json.loads(manifest_path.read_text())
    problems, files = [], []
    recorded = manifest.get("files")
    if recorded is None:
        problems.append(f"{MANIFEST_FILE} records no file hashes: this checkpoint predates them, "
                        "so its weights cannot be verified")
    else:
        for relative, expected in sorted(recorded.items()):
            path = checkpoint_dir / relative
            actual = sha256_file(path) if path.is_file() else None
            status = "ok" if actual == expected else "missing" if actual is None else "mismatch"
            files.append({"path": relative, "expected": expected, "actual": actual, "status": status})
        for path in sorted(checkpoint_dir.rglob("*")):
            relative = path.relative_to(checkpoint_dir).as_posix()
            if path.is_file() and path.suffix in WEIGHT_SUFFIXES and relative not in recorded:
                files.append({"path": relative, "expected": None, "actual": sha256_file(path),
                              "status": "unrecorded"})
    raw_files = [_verify_raw_file(entry["uri"], entry["sha256"])
                 for entry in manifest.get("dataset", {}).get("raw_files", [])]
    problems += [f"{f['path']}: {f['status']}" for f in files if f["status"] != "ok"]
    problems += [f"{f['uri']}: changed since training" for f in raw_files if f["status"] == "drift"]
    return {"checkpoint": str(checkpoint_dir), "ok": not problems, "problems": problems,
            "files": files, "raw_files": raw_files}


def _verify_raw_file(uri: str, expected: str) -> dict:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return {"uri": uri, "expected": expected, "actual": None, "status": "not checked (remote)"}
    path = Path(url2pathname(parsed.path))
    actual = sha256_file(path) if path.is_file() else None
    status = "ok" if actual == expected else "missing" if actual is None else "drift"
    return {"uri": uri, "expected": expected, "actual": actual, "status": status}
