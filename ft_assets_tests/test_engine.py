"""The training engine: DDP under torchrun (2 CPU processes on gloo), resume after a kill, gradient
accumulation, gradient checkpointing, the cosine schedule, torch.compile and length-grouped batches.

No GPU here: the CPU paths of the same code run (fp32, gloo); bf16 autocast, NCCL and the fused
CUDA optimizer are exercised only by bench/train_throughput.py on a GPU machine.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ft_assets.lib.training.distributed import World
from ft_assets.lib.training.loop import fit
from ft_assets_tests.conftest import LABELS
from ft_assets_tests.helpers import (
    causal_recipe, causal_rows, classification_recipe, classification_rows, cmdline, materialize_all,
    materialize_with_gpu_settings, parent_pids, step_failure, training_processes, write_spec,
)

# Float sums in another order (two half-batch means averaged by all-reduce instead of one mean)
# differ in the last bits; over a few dozen steps that stays far below this.
SAME_RESULT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def no_dropout_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT without dropout: runs that see the same batches then compute the same thing,
    whatever RNG stream each process draws from."""
    from transformers import AutoTokenizer, BertModel

    out = tmp_path_factory.mktemp("tiny_bert_no_dropout")
    model = BertModel.from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def train_info(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "train_info.json").read_text())


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def test_two_processes_under_torchrun_match_one_process_with_the_same_global_batch(tmp_path, no_dropout_model_dir):
    one = write_spec(tmp_path, "one", no_dropout_model_dir, batch_size=8)
    two = write_spec(tmp_path, "two", no_dropout_model_dir, batch_size=4)
    subprocess.run([sys.executable, "-m", "ft_assets.lib.training", str(one)], check=True, capture_output=True)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                               "-m", "ft_assets.lib.training", str(two)], capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]

    single, ddp = train_info(tmp_path / "one"), train_info(tmp_path / "two")
    assert ddp["processes"] == 2 and single["processes"] == 1
    assert ddp["global_batch_size"] == single["global_batch_size"] == 8
    assert ddp["steps"] == single["steps"]
    assert ddp["train_examples"] == single["train_examples"]
    assert abs(ddp["final_eval"]["eval_loss"] - single["final_eval"]["eval_loss"]) < SAME_RESULT_TOLERANCE
    assert abs(ddp["final_train_loss"] - single["final_train_loss"]) < SAME_RESULT_TOLERANCE
    assert max_weight_difference(tmp_path / "one", tmp_path / "two") < SAME_RESULT_TOLERANCE
    # Rank 0 alone printed the metric lines and the result; both processes trained.
    results = [line for line in launched.stdout.splitlines() if line.startswith('{"checkpoint"')]
    assert len(results) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["one", "two"]


def test_gradient_accumulation_matches_the_larger_batch(no_dropout_model_dir):
    big = fit(classification_recipe(no_dropout_model_dir, "full", epochs=2, batch_size=8), LABELS,
              classification_rows(20), classification_rows(5, seed=1), device="cpu")
    accumulated = fit(classification_recipe(no_dropout_model_dir, "full", epochs=2, batch_size=4,
                                            gradient_accumulation_steps=2),
                      LABELS, classification_rows(20), classification_rows(5, seed=1), device="cpu")
    assert accumulated.train_info["steps"] == big.train_info["steps"]
    assert accumulated.train_info["global_batch_size"] == 8
    a, b = dict(big.model.named_parameters()), dict(accumulated.model.named_parameters())
    assert max((a[k] - b[k]).abs().max().item() for k in a) < SAME_RESULT_TOLERANCE


def test_gradient_checkpointing_changes_memory_not_results(no_dropout_model_dir):
    plain = fit(classification_recipe(no_dropout_model_dir, "full", epochs=1), LABELS, classification_rows(10), None,
                device="cpu")
    checkpointed = fit(classification_recipe(no_dropout_model_dir, "full", epochs=1, gradient_checkpointing=True),
                       LABELS, classification_rows(10), None, device="cpu")
    assert checkpointed.train_info["gradient_checkpointing"] is True
    assert checkpointed.model.is_activation_checkpointing
    a, b = dict(plain.model.named_parameters()), dict(checkpointed.model.named_parameters())
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.parametrize("task", ["classification", "instruction"])
def test_bf16_autocast_trains_fp32_weights_to_about_the_fp32_result(no_dropout_model_dir, tiny_llama_dir, task):
    """The bf16 path a GPU takes by default, run on the CPU (where it is asked for): the weights stay
    fp32, only the matmuls run in bf16, so the result stays near fp32's."""
    from ft_assets_tests.conftest import qa_conversations

    if task == "classification":
        runs = {p: fit(classification_recipe(no_dropout_model_dir, "full", epochs=2), LABELS, classification_rows(10),
                       None, device="cpu", precision=p) for p in ("fp32", "bf16")}
    else:
        runs = {p: fit(causal_recipe(tiny_llama_dir, "lora", epochs=2, packing=True), [],
                       causal_rows(qa_conversations(24)), None, task=task, device="cpu", precision=p)
                for p in ("fp32", "bf16")}
    assert runs["bf16"].train_info["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in runs["bf16"].model.parameters())
    fp32, bf16 = (runs[p].train_info["final_train_loss"] for p in ("fp32", "bf16"))
    assert bf16 == pytest.approx(fp32, rel=0.02) and bf16 != fp32  # bf16 keeps 8 bits of mantissa


def test_the_cosine_schedule_warms_up_then_decays_to_zero(tiny_model_dir):
    result = fit(classification_recipe(tiny_model_dir, "full", epochs=4, schedule="cosine", warmup_fraction=0.25,
                                       log_every_steps=1, learning_rate=1e-3),
                 LABELS, classification_rows(20), None, device="cpu")
    rates = [r["learning_rate"] for r in result.logger.records if "learning_rate" in r]
    steps = len(rates)  # 16: 4 of warmup, then half a cosine
    assert rates[3] == pytest.approx(1e-3)  # the peak, at the end of warmup
    assert rates[:4] == sorted(rates[:4]) and rates[3:] == sorted(rates[3:], reverse=True)
    middle = 4 + (steps - 4) // 2  # halfway through the decay a cosine is at half the peak
    assert rates[middle - 1] == pytest.approx(0.5e-3, rel=0.15)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_the_schedules_are_transformers_own_to_the_last_bit(name):
    import transformers

    from ft_assets.lib.training.loop import _schedule

    theirs = {"linear": transformers.get_linear_schedule_with_warmup,
              "cosine": transformers.get_cosine_schedule_with_warmup}[name]
    for warmup, total in [(0, 1), (0, 37), (3, 10), (25, 100), (7, 7)]:
        ours_lr, theirs_lr = [], []
        for build, rates in ((lambda o: _schedule(name, o, warmup, total), ours_lr),
                             (lambda o: theirs(o, warmup, total), theirs_lr)):
            optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
            scheduler = build(optimizer)
            for _ in range(total + 2):
                rates.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
        assert ours_lr == theirs_lr, (warmup, total)


def test_a_full_fine_tuning_process_imports_neither_peft_nor_bitsandbytes(tmp_path, tiny_model_dir):
    # Importing peft (and through it bitsandbytes and torch's compiler) costs seconds of every training
    # process; only the PEFT methods need it.
    from ft_assets_tests.helpers import write_spec

    spec = write_spec(tmp_path, "full", tiny_model_dir, epochs=1)
    code = ("import runpy, sys; sys.argv = ['ft_assets.lib.training', sys.argv[1]]\n"
            "try:\n    runpy.run_module('ft_assets.lib.training', run_name='__main__')\n"
            "finally:\n    print('IMPORTED', sorted(m for m in ('peft', 'bitsandbytes') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED []" in done.stdout, done.stdout[-2000:]


def test_torch_compile_trains_to_the_same_weights_as_eager(no_dropout_model_dir):
    eager = fit(classification_recipe(no_dropout_model_dir, "full", epochs=1, compile=False), LABELS,
                classification_rows(10), None, device="cpu")
    compiled = fit(classification_recipe(no_dropout_model_dir, "full", epochs=1, compile=True), LABELS,
                   classification_rows(10), None, device="cpu")
    assert compiled.train_info["compiled"] is True and eager.train_info["compiled"] is False
    # Block by block (the mask is built outside the compiled code), not the whole model.
    from ft_assets.lib.training.methods import transformer_blocks

    assert all(block._compiled_call_impl is not None for block in transformer_blocks(compiled.model)[1])
    assert getattr(compiled.model, "_compiled_call_impl", None) is None
    a, b = dict(eager.model.named_parameters()), dict(compiled.model.named_parameters())
    assert max((a[k] - b[k]).abs().max().item() for k in a) < SAME_RESULT_TOLERANCE


def test_the_loaded_models_use_sdpa_attention(tiny_model_dir, tiny_llama_dir):
    from ft_assets.lib.training.base_models import load_causal_lm, load_classifier

    # attention: auto keeps what transformers picks when loading: no training needed to read it.
    assert load_classifier(str(tiny_model_dir), LABELS)[0].config._attn_implementation == "sdpa"
    assert load_causal_lm(str(tiny_llama_dir))[0].config._attn_implementation == "sdpa"


def test_a_recipe_picks_the_attention_kernel_and_flex_attention_asks_for_cuda(tiny_model_dir, tiny_llama_dir):
    from ft_assets_tests.conftest import qa_conversations

    eager = fit(classification_recipe(tiny_model_dir, "lora", epochs=1, attention="eager"), LABELS,
                classification_rows(4), None, device="cpu")
    assert eager.train_info["attention"] == "eager"
    assert eager.model.get_base_model().config._attn_implementation == "eager"
    with pytest.raises(ValueError, match=r"recipe 'c_lora': training.attention flex_attention trains on CUDA only"):
        fit(causal_recipe(tiny_llama_dir, "lora", packing=True, attention="flex_attention"), [],
            causal_rows(qa_conversations(4)), None, task="instruction", device="cpu")


def test_length_grouped_batches_pad_less_and_still_cover_every_example_once():
    from ft_assets.lib.config import TrainingConfig
    from ft_assets.lib.training.task import batch_sampler

    lengths = [int(x) for x in torch.randint(4, 128, (400,), generator=torch.Generator().manual_seed(0))]

    def padded_tokens(group_by_length):
        batches = batch_sampler(TrainingConfig(batch_size=16), lengths, World(), group_by_length=group_by_length)
        batches.set_epoch(1)
        drawn = list(batches)
        assert sorted(i for b in drawn for i in b) == list(range(400))
        return sum(max(lengths[i] for i in b) * len(b) for b in drawn)

    assert padded_tokens(True) < 0.75 * padded_tokens(False)


def test_every_process_gets_its_own_equal_slice_of_each_global_batch():
    from ft_assets.lib.training.distributed import GlobalBatchSampler, epoch_order

    order = epoch_order("shuffle", 21, seed=3, batch_size=8)
    slices = []
    for rank in (0, 1):
        sampler = GlobalBatchSampler(order, 21, 4, World(rank=rank, local_rank=rank, size=2))
        sampler.set_epoch(2)
        slices.append(list(sampler))
        assert len(slices[-1]) == len(sampler) == 3  # 8 + 8 + 5: the last global batch splits 3 / 2
    single = GlobalBatchSampler(order, 21, 8, World())
    single.set_epoch(2)
    assert [a + b for a, b in zip(*slices)] == list(single)
    assert not set(i for b in slices[0] for i in b) & set(i for b in slices[1] for i in b)


def wait_for_a_resume_point_then_kill(recipe_dir: Path, killed: list[int]) -> None:
    """SIGKILLs the training process once it has saved a complete step state."""
    import os
    import signal
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if list(recipe_dir.glob(".resume/*/latest.json")):
            for pid in training_processes():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return
        time.sleep(0.02)


def test_a_killed_run_resumes_from_its_last_saved_step_to_the_weights_of_an_uninterrupted_run(tmp_path,
                                                                                              tiny_model_dir):
    import threading

    import dagster as dg

    from ft_assets.defs import build_definitions
    from ft_assets.lib.config import load_config
    from ft_assets_tests.conftest import write_project

    key = dg.AssetKey(["checkpoints", "resumable"])
    recipe_ = {"name": "resumable", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "full",
               "training": {"epochs": 3, "batch_size": 4, "max_length": 16, "save_every_steps": 5}}

    def checkpoint_run(folder: Path, kill: bool):
        folder.mkdir()
        config = load_config(write_project(folder, tiny_model_dir, recipes=[recipe_]))
        defs, instance = build_definitions(config), dg.DagsterInstance.ephemeral()
        assert materialize_all(defs, instance, selection="*datasets/tickets").success
        if kill:
            killed: list[int] = []
            killer = threading.Thread(target=wait_for_a_resume_point_then_kill,
                                      args=(config.root / "checkpoints" / "resumable", killed))
            killer.start()
            assert not materialize_all(defs, instance, selection=[key], raise_on_error=False).success
            killer.join()
            assert killed, "no step state was saved before training ended"
        result = materialize_all(defs, instance, selection=[key])
        [materialization] = result.asset_materializations_for_node("checkpoints__resumable")
        return materialization.metadata, config

    resumed, config = checkpoint_run(tmp_path / "killed", kill=True)
    uninterrupted, _ = checkpoint_run(tmp_path / "whole", kill=False)
    assert resumed["resumed_from_step"].value >= 5 and uninterrupted["resumed_from_step"].value == 0
    assert resumed["manifest"].value["train_info"]["steps"] == uninterrupted["manifest"].value["train_info"]["steps"]
    assert max_weight_difference(Path(resumed["checkpoint_path"].value),
                                 Path(uninterrupted["checkpoint_path"].value)) < 1e-5
    # A saved checkpoint leaves nothing to resume.
    assert not (config.root / "checkpoints" / "resumable" / ".resume").exists()


def test_the_yaml_gpu_processes_setting_runs_the_asset_under_torchrun(tmp_path, tiny_model_dir):
    result = materialize_with_gpu_settings(tmp_path, tiny_model_dir, {"device": "cpu", "processes": 2})
    assert result.success
    # One materialization, from rank 0 alone, for a run of two processes.
    [materialization] = result.asset_materializations_for_node("checkpoints__ddp")
    info = materialization.metadata["manifest"].value["train_info"]
    assert materialization.metadata["processes"].value == 2
    assert info["processes"] == 2 and info["global_batch_size"] == 8


def test_more_cuda_processes_than_gpus_are_refused_before_torchrun_starts(tmp_path, tiny_model_dir):
    # This machine has no GPU (test_gpu.py asks a GPU machine for one process more than it has GPUs).
    result = materialize_with_gpu_settings(tmp_path, tiny_model_dir, {"device": "cuda", "processes": 2})
    assert not result.success
    assert ("training failed and nothing was registered (no folder at" in step_failure(result)
            and "ValueError: gpu.processes is 2 on gpu.device cuda, but torch sees no CUDA GPU on this machine: set "
                "gpu.device to cpu or auto to train 2 CPU processes" in step_failure(result))


# instruction in bf16: the combination a GPU runs by default (compiled, bf16 autocast, packed rows); text
# blocks in fp32. Each case compiles its own graphs, a minute or more of this machine's CPU.
@pytest.mark.parametrize("task,precision", [("language_modeling", "fp32"), ("instruction", "bf16")])
def test_a_compiled_checkpointed_causal_lm_trains_like_the_eager_one(tiny_llama_dir, task, precision):
    from ft_assets_tests.conftest import qa_conversations, story_lines

    train = causal_rows(qa_conversations(24) if task == "instruction" else story_lines(60))
    settings = {"epochs": 1, "packing": task == "instruction"}
    eager = fit(causal_recipe(tiny_llama_dir, "full", **settings, compile=False), [], train, None, task=task,
                device="cpu", precision=precision)
    fast = fit(causal_recipe(tiny_llama_dir, "full", **settings, compile=True, gradient_checkpointing=True), [],
               train, None, task=task, device="cpu", precision=precision)
    assert fast.train_info["compiled"] and fast.train_info["gradient_checkpointing"]
    assert abs(fast.train_info["final_train_loss"] - eager.train_info["final_train_loss"]) < SAME_RESULT_TOLERANCE


def test_two_processes_killed_mid_run_resume_to_the_weights_of_an_uninterrupted_pair(tmp_path, tiny_model_dir):
    """The training processes themselves are killed (as the OOM killer would), torchrun then fails;
    the rerun resumes every rank from its own saved RNG state."""
    import os
    import signal
    import time

    def spec(name: str) -> Path:
        path = write_spec(tmp_path, name, tiny_model_dir, epochs=8, batch_size=4, save_every_steps=3)
        spec = json.loads(path.read_text())
        path.write_text(json.dumps({**spec, "validation_path": None, "resume_dir": str(tmp_path / f"resume_{name}")}))
        return path

    def torchrun(path: Path) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                "ft_assets.lib.training", str(path)]

    subprocess.run(torchrun(spec("whole")), check=True, capture_output=True, timeout=600)
    killed = spec("killed")
    launcher = subprocess.Popen(torchrun(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "resume_killed").glob("*/latest.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    # torchrun's own workers only: other tests may be training beside this one (make test runs two files at once).
    workers = [pid for pid in _descendants(launcher.pid) if _is_training_worker(pid)]
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert len(workers) == 2 and launcher.wait(timeout=120) != 0
    assert not (tmp_path / "killed").exists()

    subprocess.run(torchrun(killed), check=True, capture_output=True, timeout=600)
    assert train_info(tmp_path / "killed")["resumed_from_step"] >= 3
    assert max_weight_difference(tmp_path / "whole", tmp_path / "killed") < 1e-5
    assert not (tmp_path / "resume_killed").exists()


def _is_training_worker(pid: int) -> bool:
    command = cmdline(pid)
    return b"ft_assets.lib.training" in command and b"torch.distributed.run" not in command


@pytest.mark.parametrize("processes,killed", [(1, "dagster"), (2, "dagster"), (2, "torchrun")])
def test_training_stops_when_the_dagster_process_that_launched_it_is_killed(tmp_path, tiny_model_dir, processes,
                                                                             killed):
    """The Dagster process running the checkpoint step, or torchrun, is SIGKILLed (by the OOM killer,
    say): the training process, or torchrun's workers, must not train on, holding the device, for a
    run that is over."""
    import os
    import signal
    import time

    import yaml

    from ft_assets_tests.conftest import write_project

    config_path = write_project(tmp_path, tiny_model_dir, recipes=[
        {"name": "orphaned", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "full",
         "training": {"epochs": 1000, "batch_size": 4, "max_length": 16, "save_every_steps": 0}}])
    raw = yaml.safe_load(config_path.read_text())
    config_path.write_text(yaml.safe_dump({**raw, "gpu": {"device": "cpu", "processes": processes}}, sort_keys=False))
    dagster = subprocess.Popen([sys.executable, "-c", f"""
import dagster as dg
from ft_assets.defs import build_definitions
from ft_assets.lib.config import load_config
from ft_assets_tests.helpers import materialize_all
materialize_all(build_definitions(load_config({str(config_path)!r})), dg.DagsterInstance.ephemeral(),
                selection="*checkpoints/orphaned")
"""])

    def training(workers_only: bool) -> list[int]:
        """The launched training processes: torchrun and its workers, or the one process."""
        return [pid for pid in _descendants(dagster.pid) if _is_training_worker(pid)
                or (not workers_only and b"ft_assets.lib.training" in cmdline(pid))]

    launched: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while len(training(workers_only=True)) < processes and time.monotonic() < deadline \
                and dagster.poll() is None:
            time.sleep(0.1)
        assert len(training(workers_only=True)) == processes
        time.sleep(3)  # into the training loop
        launched = training(workers_only=False)
        if killed == "dagster":
            os.kill(dagster.pid, signal.SIGKILL)
            dagster.wait()
        else:
            [torchrun] = [pid for pid in launched if b"torch.distributed.run" in cmdline(pid)]
            os.kill(torchrun, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (running := [pid for pid in launched if b"ft_assets.lib.training" in cmdline(pid)]) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running, "training went on after the process that launched it was killed"
    finally:
        for pid in launched:
            if b"ft_assets.lib.training" in cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        if dagster.poll() is None:
            dagster.kill()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_pids().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_the_quiet_message_reader_hands_on_every_message_whole_and_in_order(tmp_path):
    """What the training process writes reaches Dagster's handler (stood in for by a list here) once,
    whole and in order: a line written in two halves, a poll apart, arrives once it is complete, and
    what is written just before the session closes still arrives."""
    import time

    from ft_assets.defs.training.launcher import QuietFileMessageReader

    class Handler:
        def __init__(self):
            self.messages = []

        def handle_message(self, message):
            self.messages.append(message)

        def report_pipes_framework_exception(self, origin, exc_info):
            raise AssertionError(f"{origin}: {exc_info[1]!r}")

    def arrived(expected) -> bool:
        deadline = time.monotonic() + 30  # a loaded CI machine may be slow to schedule the reader
        while handler.messages != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return handler.messages == expected

    handler, path = Handler(), tmp_path / "messages"
    with QuietFileMessageReader(str(path)).read_messages(handler):
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"n": 1}) + "\n")
            out.flush()
            assert arrived([{"n": 1}])
            out.write('{"n":')
            out.flush()
            time.sleep(3 * QuietFileMessageReader.POLL_SECONDS)  # a few polls see the half line
            out.write(" 2}\n")
            out.flush()
            assert arrived([{"n": 1}, {"n": 2}])  # once whole, within a poll: not only at the end
            out.write(json.dumps({"n": 3}) + "\n")
    assert handler.messages == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert not path.exists()  # removed with the session
