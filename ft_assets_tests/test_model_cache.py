"""s3:// base models against a real local S3 endpoint (moto's server): download, cache hits, content naming."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import s3fs

from ft_assets.lib.storage import folder_sha256
from ft_assets.lib.training.model_cache import fetch_model
from ft_assets_tests.s3_server import auth_enforced


@pytest.fixture(scope="session")
def nested_model_dir(tmp_path_factory) -> Path:
    """A 1-layer Llama with random weights, as save_pretrained writes it, plus a file in a subfolder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    (out / "extra").mkdir()
    (out / "extra" / "notes.txt").write_text("nested keys keep their folders\n")
    return out


@pytest.fixture
def s3(s3_endpoint) -> s3fs.S3FileSystem:
    """The uploader's view of the bucket, separate from the instance fetch_model makes."""
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


@pytest.fixture
def bucket(s3) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    return name


@pytest.fixture
def download_calls(monkeypatch) -> list[str]:
    """Every object fetch_model downloads: s3fs routes each one through `_get_file`."""
    calls = []
    original = s3fs.S3FileSystem._get_file

    async def counting_get_file(self, rpath, lpath, **kwargs):
        calls.append(rpath)
        return await original(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", counting_get_file)
    return calls


def upload(s3: s3fs.S3FileSystem, folder: Path, dest: str) -> int:
    """Copies every file under `folder` to `dest/<relative path>`; returns how many."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        s3.put_file(str(path), f"{dest}/{path.relative_to(folder).as_posix()}")
    return len(files)


def test_fetch_downloads_a_loadable_model(s3, bucket, nested_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    upload(s3, nested_model_dir, f"{bucket}/llama")
    local = fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)

    assert local == tmp_path / folder_sha256(nested_model_dir)
    assert (local / "extra" / "notes.txt").read_text() == "nested keys keep their folders\n"
    original = AutoModelForCausalLM.from_pretrained(nested_model_dir).state_dict()
    fetched = AutoModelForCausalLM.from_pretrained(local).state_dict()
    assert fetched.keys() == original.keys()
    assert all(torch.equal(fetched[name], original[name]) for name in original)


def test_default_cache_root_comes_from_the_environment(s3, bucket, nested_model_dir, tmp_path, monkeypatch):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    monkeypatch.setenv("FT_ASSETS_MODEL_CACHE", str(tmp_path / "from_env"))

    assert fetch_model(f"s3://{bucket}/llama").parent == tmp_path / "from_env"


def test_s3_specific_endpoint_variable_is_honoured(s3_endpoint, s3, bucket, nested_model_dir, tmp_path,
                                                    monkeypatch):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)

    assert fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path).is_dir()


def test_second_fetch_downloads_nothing(s3, bucket, nested_model_dir, tmp_path, download_calls):
    n_files = upload(s3, nested_model_dir, f"{bucket}/llama")
    first = fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)
    assert len(download_calls) == n_files  # the spy sees real downloads

    second = fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)

    assert second == first
    assert len(download_calls) == n_files


def test_changed_object_gets_a_new_folder(s3, bucket, nested_model_dir, tmp_path):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    before = fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)
    config = json.loads((nested_model_dir / "config.json").read_text())
    s3.pipe(f"{bucket}/llama/config.json", json.dumps({**config, "rope_theta": 5000.0}).encode())

    after = fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)

    assert after != before and after.parent == before.parent
    assert json.loads((after / "config.json").read_text())["rope_theta"] == 5000.0
    assert (before / "config.json").read_text() == (nested_model_dir / "config.json").read_text()


def test_same_bytes_under_another_prefix_share_one_folder(s3, bucket, nested_model_dir, tmp_path):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    upload(s3, nested_model_dir, f"{bucket}/copies/llama-again")

    first = fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)
    second = fetch_model(f"s3://{bucket}/copies/llama-again/", cache_root=tmp_path)

    assert second == first
    # One model folder and the index: the second download's staging copy is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, "index.json"])


def test_failed_download_leaves_nothing_behind(s3, bucket, nested_model_dir, tmp_path, monkeypatch):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    original = s3fs.S3FileSystem._get_file
    calls = []

    async def fail_on_second_object(self, rpath, lpath, **kwargs):
        calls.append(rpath)
        if len(calls) == 2:
            raise ConnectionError("connection reset mid-download")
        return await original(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", fail_on_second_object)
    with pytest.raises(ConnectionError):
        fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", original)
    assert fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path) == tmp_path / folder_sha256(nested_model_dir)


def test_upload_during_download_is_not_cached(s3, bucket, nested_model_dir, tmp_path, monkeypatch):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    original = s3fs.S3FileSystem._get_file
    # Same size, other bytes: only the ETag in a second listing can tell.
    new_config = (nested_model_dir / "config.json").read_bytes().upper()
    reuploaded = []

    async def reupload_config_first(self, rpath, lpath, **kwargs):
        if not reuploaded:
            reuploaded.append(rpath)
            await self._pipe_file(f"{bucket}/llama/config.json", new_config)
        return await original(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", reupload_config_first)
    with pytest.raises(RuntimeError, match=f"s3://{bucket}/llama/ changed during the download"):
        fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_key_that_is_also_a_folder_is_not_cached_without_it(s3, bucket, nested_model_dir, tmp_path):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    s3.pipe(f"{bucket}/llama/extra", b"a file where the folder extra/ must go")

    with pytest.raises(RuntimeError, match=re.escape("did not download whole: ['extra']")):
        fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri_path", ["absent/", "nothing-here"])
def test_missing_prefix_names_the_uri(s3, bucket, tmp_path, uri_path):
    uri = f"s3://{bucket}/{uri_path}"
    with pytest.raises(FileNotFoundError, match=f"no objects under {uri}"):
        fetch_model(uri, cache_root=tmp_path)


def test_missing_bucket_names_the_uri(s3_endpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no objects under s3://no-such-bucket-here/m/"):
        fetch_model("s3://no-such-bucket-here/m/", cache_root=tmp_path)


def test_folder_without_config_json_is_refused(s3, bucket, nested_model_dir, tmp_path):
    s3.put_file(str(nested_model_dir / "model.safetensors"), f"{bucket}/weights-only/model.safetensors")
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/weights-only/ has no config.json"):
        fetch_model(f"s3://{bucket}/weights-only/", cache_root=tmp_path)


@pytest.mark.parametrize("key", ["a/../../../outside.txt", "../sibling.txt", "/etc/evil", "./dot.txt"])
def test_key_escaping_the_folder_is_refused(s3, bucket, nested_model_dir, tmp_path, key):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    s3.pipe(f"{bucket}/llama/{key}", b"payload")

    with pytest.raises(ValueError, match=re.escape(f"refusing object key '{bucket}/llama/{key}'")):
        fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)
    assert list(tmp_path.rglob("*")) == []


def test_missing_credentials_say_how_to_set_them(s3, bucket, nested_model_dir, tmp_path, monkeypatch):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(PermissionError, match=f"cannot read s3://{bucket}/llama/ .*AWS_ACCESS_KEY_ID"):
        fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)


def test_denied_credentials_are_not_echoed(s3_endpoint, s3, bucket, nested_model_dir, tmp_path, monkeypatch):
    upload(s3, nested_model_dir, f"{bucket}/llama")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-this-secret")

    with auth_enforced(s3_endpoint), pytest.raises(PermissionError) as raised:
        fetch_model(f"s3://{bucket}/llama/", cache_root=tmp_path)
    assert f"cannot read s3://{bucket}/llama/" in str(raised.value)
    assert "do-not-print-this-secret" not in str(raised.value) + str(raised.value.__cause__)


@pytest.mark.parametrize("uri, message", [
    ("/local/model", "is not an s3://bucket/prefix/ URI"),
    ("s3:///prefix/", "names no bucket"),
    ("s3://AKIA123:topsecret@bucket/m/", "must not carry credentials"),
])
def test_malformed_uri_is_refused(uri, message, tmp_path):
    with pytest.raises(ValueError, match=message) as raised:
        fetch_model(uri, cache_root=tmp_path)
    assert "topsecret" not in str(raised.value)


def test_a_recipe_trains_from_an_s3_base_model_and_records_its_cache_digest(s3, bucket, tiny_llama_dir, tmp_path,
                                                                        monkeypatch):
    from ft_assets.lib.config import RecipeConfig
    from ft_assets.lib.training.checkpoint import save_checkpoint
    from ft_assets.lib.training.loop import fit
    from ft_assets_tests.conftest import qa_conversations

    upload(s3, tiny_llama_dir, f"{bucket}/base")
    monkeypatch.setenv("FT_ASSETS_MODEL_CACHE", str(tmp_path / "cache"))
    recipe = RecipeConfig(name="from_s3", dataset="d", base_model=f"s3://{bucket}/base/", method="lora",
                          training={"epochs": 1, "batch_size": 8, "max_length": 64})
    texts = qa_conversations(16)
    result = fit(recipe, [], {"text": texts, "label": [None] * 16}, None, task="instruction", device="cpu")
    manifest = save_checkpoint(result, recipe, [], tmp_path / "ckpt", {})
    base = manifest["base_model"]
    assert base["id"] == f"s3://{bucket}/base/" and base["path"].startswith(str(tmp_path / "cache"))
    # One digest per model folder: the manifest names the base by the same sha256 as the cache folder
    # it was read from, which is that of the folder uploaded (two digests disagreed before).
    assert base["sha256"] == Path(base["path"]).name == folder_sha256(tiny_llama_dir)
