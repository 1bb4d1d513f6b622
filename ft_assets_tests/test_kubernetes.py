"""The kubernetes launcher (FT_ENV=k8s): the training pod as PipesK8sClient renders it and sends it to the
Kubernetes API.

No Kubernetes cluster exists where these tests run. They check the pod body dagster-k8s renders from
our base_pod_spec, and drive a real PipesK8sClient through a whole materialization with only the
Kubernetes API calls (CoreV1Api methods) replaced; a child process with the pod's environment plays
the container. Nothing here shows that a cluster schedules the pod or that its GPUs work.
"""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster_k8s import PipesK8sClient
from dagster_k8s.pipes import DEFAULT_CONTAINER_NAME, build_pod_body

from ft_assets.defs.resources import build_resources
from ft_assets.defs.training.kubernetes import pod_spec, run_in_pod
from ft_assets.defs.training.launcher import TrainingLauncher
from ft_assets.lib.config import ConfigError, KubernetesConfig, StorageConfig, load_config
from ft_assets_tests.conftest import readme_block
from ft_assets_tests.helpers import MINIMAL_CONFIG, materialize_all, write_config

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["python", "-m", "ft_assets.lib.training", "--processes=4", "s3://bucket/runs/x/spec.json"]
KUBE = KubernetesConfig.model_validate({
    "image": "registry.example.com/ft-assets-cuda:1",
    "namespace": "gpu-jobs",
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60}],
    "timeout_seconds": 7200,
    "service_account_name": "trainer",
    "env_from_secrets": ["ft-assets-s3"],
})


def wire(pod) -> dict:
    """The JSON the Kubernetes client sends for a V1Pod: camelCase keys, None fields dropped."""
    return kubernetes.client.ApiClient().sanitize_for_serialization(pod)


def test_rendered_pod_has_one_gpu_container_with_the_image_command_and_scheduling():
    body = wire(build_pod_body(pod_name="dagster-run-checkpoints-1", image=KUBE.image, command=COMMAND,
                               env_vars={"FT_ENV": "k8s"}, base_pod_meta=None,
                               base_pod_spec=pod_spec(KUBE, gpus=4)))
    spec = body["spec"]
    [container] = spec["containers"]
    assert container["name"] == DEFAULT_CONTAINER_NAME
    assert container["image"] == KUBE.image
    assert container["command"] == COMMAND
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "4"}}
    assert container["envFrom"] == [{"secretRef": {"name": "ft-assets-s3"}}]
    assert {"name": "FT_ENV", "value": "k8s"} in container["env"]
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert spec["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60},
    ]
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 7200
    assert spec["serviceAccountName"] == "trainer"
    assert "initContainers" not in spec
    assert body["metadata"]["name"] == "dagster-run-checkpoints-1"


def test_optional_scheduling_fields_are_left_out_when_unset():
    spec = wire(build_pod_body(pod_name="p", image="img", command=["python", "-m", "ft_assets.lib.training", "s"],
                               env_vars={}, base_pod_meta=None,
                               base_pod_spec=pod_spec(KubernetesConfig(image="img"), gpus=1)))["spec"]
    assert spec["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert not {"nodeSelector", "tolerations", "serviceAccountName"} & set(spec)
    assert "envFrom" not in spec["containers"][0]
    assert spec["activeDeadlineSeconds"] == 86400


def test_a_pod_without_gpus_is_refused():
    with pytest.raises(ValueError, match="at least one GPU"):
        pod_spec(KUBE, gpus=0)


# A kubeconfig for a cluster that is never contacted: every CoreV1Api call below is replaced.
KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "fake",
    "clusters": [{"name": "fake", "cluster": {"server": "https://127.0.0.1:9"}}],
    "users": [{"name": "fake", "user": {"token": "not-a-token"}}],
    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "kubeconfig-ns"}}],
}

# What rank 0 of the training command does with Pipes, run with the pod's environment.
CONTAINER_SCRIPT = """
import os
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    pipes.log.info("training in the pod")
    pipes.report_asset_materialization(metadata={"train_loss": 0.25, "ft_env": os.environ["FT_ENV"]})
"""


class FakeCluster:
    """Stands in for the Kubernetes API server: records the pod, plays its container, deletes it."""

    def __init__(self):
        self.created: list[tuple[str, object]] = []
        self.deleted: list[tuple[str, str]] = []

    def install(self, monkeypatch):
        api = kubernetes.client.CoreV1Api
        # Parameter names as the real methods', which dagster_k8s also passes by keyword.
        monkeypatch.setattr(api, "create_namespaced_pod",
                            lambda _, namespace, body, **kw: self._create(namespace, body))
        monkeypatch.setattr(api, "list_namespaced_pod", lambda _, namespace, **kw: self._list())
        monkeypatch.setattr(api, "read_namespaced_pod_log", lambda _, name, namespace, **kw: self._log())
        monkeypatch.setattr(api, "delete_namespaced_pod",
                            lambda _, name, namespace, **kw: self.deleted.append((namespace, name)))

    def _create(self, namespace, body):
        self.created.append((namespace, body))
        return body

    def _list(self):
        # The container has already exited 0: both of the client's waits (ready, terminated) end.
        status = kubernetes.client.V1ContainerStatus(
            name=DEFAULT_CONTAINER_NAME, image="img", image_id="", ready=False, restart_count=0,
            state=kubernetes.client.V1ContainerState(
                terminated=kubernetes.client.V1ContainerStateTerminated(exit_code=0)))
        pod = kubernetes.client.V1Pod(status=kubernetes.client.V1PodStatus(container_statuses=[status]))
        return kubernetes.client.V1PodList(items=[pod])

    def _log(self):
        """The container's log as the API streams it: one '<timestamp> <line>' per line."""
        [(_, body)] = self.created
        [container] = body.spec.containers
        env = {**os.environ, **{e.name: e.value for e in container.env}}
        done = subprocess.run([sys.executable, "-c", CONTAINER_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        lines = (done.stdout + done.stderr).splitlines()
        return [f"2026-01-01T00:00:{i:02d}.000000Z {line}\n".encode() for i, line in enumerate(lines)]


@pytest.mark.parametrize("namespace, expected", [("gpu-jobs", "gpu-jobs"), (None, "kubeconfig-ns")])
def test_run_in_pod_sends_the_pod_to_the_api_and_reads_pipes_back_from_its_log(tmp_path, monkeypatch, namespace,
                                                                               expected):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    cluster = FakeCluster()
    cluster.install(monkeypatch)
    runs = []
    real_run = PipesK8sClient.run
    monkeypatch.setattr(PipesK8sClient, "run", lambda self, **kw: runs.append(kw) or real_run(self, **kw))
    kube = KUBE.model_copy(update={"namespace": namespace})

    @dg.asset(key=["checkpoints", "r"])
    def checkpoint(context: dg.AssetExecutionContext, pipes_k8s_client: PipesK8sClient):
        return run_in_pod(context, pipes_k8s_client, kube, COMMAND, gpus=4,
                          env={"FT_ENV": "k8s"}).get_materialize_result()

    result = dg.materialize([checkpoint], resources={
        "pipes_k8s_client": PipesK8sClient(kubeconfig_file=str(kubeconfig))})

    assert result.success
    [(sent_to, pod)] = cluster.created
    assert sent_to == expected
    assert isinstance(pod, kubernetes.client.V1Pod)
    [container] = pod.spec.containers
    assert container.image == KUBE.image and container.command == COMMAND
    assert container.resources.limits == {"nvidia.com/gpu": "4"}
    assert [t.key for t in pod.spec.tolerations] == ["nvidia.com/gpu", "spot"]
    env = {e.name for e in container.env}
    assert {"FT_ENV", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= env
    assert pod.metadata.name.startswith(f"dagster-{result.run_id[:18]}-checkpoints")
    assert cluster.deleted == [(expected, pod.metadata.name)]
    assert runs[0]["pod_wait_timeout"] == 7200
    [materialization] = result.asset_materializations_for_node("checkpoints__r")
    assert materialization.metadata["train_loss"].value == 0.25
    assert materialization.metadata["ft_env"].value == "k8s"


def test_a_failed_pod_fails_the_step_and_is_deleted(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    cluster = FakeCluster()
    cluster.install(monkeypatch)
    failed = kubernetes.client.V1ContainerStatus(
        name=DEFAULT_CONTAINER_NAME, image="img", image_id="", ready=False, restart_count=0,
        state=kubernetes.client.V1ContainerState(waiting=kubernetes.client.V1ContainerStateWaiting(
            reason="ErrImagePull", message="manifest unknown")))
    monkeypatch.setattr(kubernetes.client.CoreV1Api, "list_namespaced_pod", lambda _, namespace, **kw:
                        kubernetes.client.V1PodList(items=[kubernetes.client.V1Pod(
                            status=kubernetes.client.V1PodStatus(container_statuses=[failed]))]))
    monkeypatch.setattr(kubernetes.client.CoreV1Api, "list_namespaced_event",
                        lambda _, namespace, **kw: kubernetes.client.CoreV1EventList(items=[]))

    @dg.asset(key=["checkpoints", "r"])
    def checkpoint(context: dg.AssetExecutionContext, pipes_k8s_client: PipesK8sClient):
        return run_in_pod(context, pipes_k8s_client, KUBE, COMMAND, gpus=4).get_materialize_result()

    result = dg.materialize([checkpoint], resources={
        "pipes_k8s_client": PipesK8sClient(kubeconfig_file=str(kubeconfig))}, raise_on_error=False)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "ErrImagePull" in str(failure.step_failure_data.error)
    [(_, pod)] = cluster.created
    assert cluster.deleted == [("gpu-jobs", pod.metadata.name)]


class TrainingCluster(FakeCluster):
    """Plays the container by running its real command (the image's `python` is this interpreter) with
    the pod's environment plus the S3 endpoint and keys, as the env_from_secrets Secret would give them,
    in an empty working directory: the pod sees nothing of the Dagster machine's disk but S3."""

    def __init__(self, workdir: Path):
        super().__init__()
        self.workdir = workdir
        self.exit_code = None  # the container has not run yet

    def _list(self):
        """The container's state: terminated with its real exit code once it has run."""
        pods = super()._list()
        pods.items[0].status.container_statuses[0].state.terminated.exit_code = self.exit_code or 0
        return pods

    def _log(self):
        [(_, body)] = self.created[-1:]  # the latest pod
        [container] = body.spec.containers
        command = [sys.executable if part == "python" else part for part in container.command]
        env = {**{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "HF_", "PATH", "HOME"))},
               **{e.name: e.value for e in container.env}}
        self.exit_code, output = self._run_container(command, env)
        return [f"2026-01-01T00:00:00.{i:06d}Z {line}\n".encode() for i, line in enumerate(output.splitlines())]

    def _run_container(self, command: list[str], env: dict) -> tuple[int, str]:
        done = subprocess.run(command, env=env, cwd=self.workdir, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout + done.stderr


class PreemptedCluster(TrainingCluster):
    """The container is killed (as a preempted spot node would kill it) once the bucket holds a
    complete step state under `resume_prefix`."""

    def __init__(self, workdir: Path, resume_prefix: str):
        super().__init__(workdir)
        self.resume_prefix = resume_prefix

    def _run_container(self, command: list[str], env: dict) -> tuple[int, str]:
        import time

        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        container = subprocess.Popen(command, env=env, cwd=self.workdir, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while container.poll() is None and not fs.glob(f"{self.resume_prefix}/*/latest.json") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        container.kill()
        output = container.communicate()[0]
        return (137 if container.returncode == -9 else container.returncode), output


def pod_project(tmp_path: Path, tiny_model_dir: Path, bucket: str, recipe: dict, **settings):
    """A project on s3://<bucket>/project with a kubernetes block and its tickets dataset materialized:
    (config, Definitions whose PipesK8sClient reads a kubeconfig, instance). `settings` are more
    top-level YAML blocks (gpu: ...)."""
    import s3fs

    from ft_assets.defs import build_definitions
    from ft_assets_tests.conftest import write_project

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    config_path = write_project(tmp_path, tiny_model_dir, recipes=[
        {"dataset": "tickets", "base_model": str(tiny_model_dir), "method": "full", **recipe}])
    raw = yaml.safe_load(config_path.read_text())
    raw["storage"] = {"root": f"s3://{bucket}/project", "local": "data"}
    raw["kubernetes"] = {"image": "registry.example.com/ft-assets-cuda:1", "env_from_secrets": ["ft-assets-s3"]}
    config_path.write_text(yaml.safe_dump({**raw, **settings}, sort_keys=False))
    config = load_config(config_path)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    defs = build_definitions(config)
    defs = dg.Definitions(assets=defs.assets, resources={
        **defs.resources, "launcher": TrainingLauncher(target="kubernetes", kubeconfig_file=str(kubeconfig))})
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_all(defs, instance, selection="*datasets/tickets").success
    (tmp_path / "pod").mkdir()
    return config, defs, instance


def test_a_checkpoint_trains_in_a_pod_that_reads_and_publishes_through_s3(tmp_path, monkeypatch, tiny_model_dir,
                                                                          s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    config, defs, instance = pod_project(tmp_path, tiny_model_dir, "pods", {
        "name": "podded", "training": {"epochs": 1, "batch_size": 16, "max_length": 16}})
    cluster = TrainingCluster(tmp_path / "pod")
    cluster.install(monkeypatch)
    result = materialize_all(defs, instance, selection=[dg.AssetKey(["checkpoints", "podded"])])

    assert result.success and cluster.exit_code == 0
    [(_, pod)] = cluster.created
    [container] = pod.spec.containers
    assert container.command[:3] == ["python", "-m", "ft_assets.lib.training"]
    spec_uri = container.command[-1]
    assert spec_uri.startswith(f"s3://pods/project/runs/{result.run_id}/podded/")
    [materialization] = result.asset_materializations_for_node("checkpoints__podded")
    metadata = materialization.metadata
    published = metadata["published_uri"].value
    assert published.startswith("s3://pods/project/checkpoints/podded/")
    assert fs.exists(f"{published}/manifest.json") and fs.exists(f"{published}/model.safetensors")
    assert metadata["trainable_params"].value > 0  # reported by rank 0 through Pipes, read from the pod's log
    assert metadata["manifest"].value["dagster"]["run_id"] == result.run_id
    # Nothing was written on the Dagster machine's disk: the pod's checkpoint exists only in S3.
    assert not (config.root / "checkpoints" / "podded").exists() or not [
        p for p in (config.root / "checkpoints" / "podded").iterdir() if not p.name.startswith(".")]

    # The report runs where the Dagster run is and evaluates the published copy; the model card in S3
    # gains the results.
    assert "Not evaluated yet" in fs.cat(f"{published}/README.md").decode()
    assert materialize_all(defs, instance, selection=[dg.AssetKey(["reports", "podded"])]).success
    card = fs.cat(f"{published}/README.md").decode()
    assert "Not evaluated yet" not in card and "Test split, " in card and "model-index" in card


def test_a_training_pod_that_fails_fails_the_asset_with_the_reason_it_left_in_s3(tmp_path, monkeypatch,
                                                                                tiny_model_dir, s3_endpoint):
    # The pod is asked for CUDA and has none (as a pod scheduled without its GPUs would): it fails in
    # setup, after the spec was staged.
    _, defs, instance = pod_project(tmp_path, tiny_model_dir, "failing", {"name": "no_gpu", "training": {"epochs": 1}},
                                    gpu={"device": "cuda"})
    cluster = TrainingCluster(tmp_path / "pod")
    cluster.install(monkeypatch)
    result = materialize_all(defs, instance, selection=[dg.AssetKey(["checkpoints", "no_gpu"])],
                             raise_on_error=False)

    assert not result.success and cluster.exit_code != 0
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = str(failure.event_specific_data.error)
    assert "checkpoints/no_gpu: training failed and nothing was registered" in description
    assert "ValueError: device 'cuda' was requested but torch sees no CUDA device" in description
    assert instance.get_latest_materialization_event(dg.AssetKey(["checkpoints", "no_gpu"])) is None


def test_a_preempted_training_pod_resumes_in_the_next_pod_from_its_step_state_in_s3(tmp_path, monkeypatch,
                                                                                      tiny_model_dir, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    key = dg.AssetKey(["checkpoints", "preempted"])
    _, defs, instance = pod_project(tmp_path, tiny_model_dir, "spot", {
        "name": "preempted", "training": {"epochs": 3, "batch_size": 4, "max_length": 16, "save_every_steps": 5}})
    resume_prefix = "spot/project/checkpoints/preempted/.resume"
    PreemptedCluster(tmp_path / "pod", resume_prefix).install(monkeypatch)
    assert not materialize_all(defs, instance, selection=[key], raise_on_error=False).success
    assert fs.glob(f"{resume_prefix}/*/latest.json"), "the killed pod left no step state in the bucket"
    assert instance.get_latest_materialization_event(key) is None

    TrainingCluster(tmp_path / "pod").install(monkeypatch)
    result = materialize_all(defs, instance, selection=[key])
    [materialization] = result.asset_materializations_for_node("checkpoints__preempted")
    assert materialization.metadata["resumed_from_step"].value >= 5
    assert not fs.exists(resume_prefix)  # the checkpoint is published: nothing left to resume


def project_with(tmp_path: Path, kubernetes_block: dict) -> Path:
    return write_config(tmp_path, {**MINIMAL_CONFIG, "kubernetes": kubernetes_block})


@pytest.mark.parametrize("block, expected", [
    ({"namespace": "gpu-jobs"}, "kubernetes.image: Field required"),
    ({"image": ""}, "kubernetes.image: String should have at least 1 character"),
    ({"image": "img", "image_pull_policy": "Sometimes"}, "kubernetes.image_pull_policy"),
    ({"image": "img", "timeout_seconds": 0}, "kubernetes.timeout_seconds: Input should be greater than 0"),
    ({"image": "img", "tolerations": [{"key": "k", "efect": "NoSchedule"}]},
     "kubernetes.tolerations.0.efect: Extra inputs are not permitted"),
    ({"image": "img", "tolerations": [{"key": "k", "effect": "NoSchedul"}]}, "kubernetes.tolerations.0.effect"),
    ({"image": "img", "tolerations": [{"effect": "NoSchedule"}]}, "without a key matches every taint only with"),
    ({"image": "img", "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, "drop value"),
    ({"image": "img", "gpus": 4}, "kubernetes.gpus: Extra inputs are not permitted"),
])
def test_a_bad_kubernetes_block_names_the_file_and_the_field(tmp_path, block, expected):
    path = project_with(tmp_path, block)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_the_kubernetes_block_is_optional_and_required_only_to_train_in_a_pod(tmp_path, monkeypatch):
    monkeypatch.delenv("FT_ASSETS_ROOT", raising=False)
    pods = TrainingLauncher(target="kubernetes")
    config = load_config(write_config(tmp_path, MINIMAL_CONFIG))
    assert config.kubernetes is None and TrainingLauncher().require_kubernetes(config) is None
    with pytest.raises(dg.Failure, match="needs a `kubernetes:` block"):
        pods.require_kubernetes(config)
    local = load_config(project_with(tmp_path, {"image": "img"}))
    with pytest.raises(dg.Failure, match="storage.root: s3://"):
        pods.require_kubernetes(local)
    remote = load_config(write_config(tmp_path, {**MINIMAL_CONFIG, "storage": {"root": "s3://b/p"},
                                                 "kubernetes": {"image": "img"}}))
    assert pods.require_kubernetes(remote) == KubernetesConfig(image="img")
    assert TrainingLauncher().require_kubernetes(remote) is None  # the block alone trains nothing in a pod


@pytest.mark.parametrize("ft_env, target", [(None, "local"), ("k8s", "kubernetes"), ("dev", "local")])
def test_ft_env_k8s_is_a_shortcut_for_the_kubernetes_launcher(tmp_path, monkeypatch, ft_env, target):
    if ft_env is None:
        monkeypatch.delenv("FT_ENV", raising=False)
    else:
        monkeypatch.setenv("FT_ENV", ft_env)
    assert build_resources(load_config(write_config(tmp_path, MINIMAL_CONFIG)))["launcher"].target == target


def test_the_readme_kubernetes_block_validates():
    block = readme_block("# ft_assets kubernetes block")
    kube = KubernetesConfig.model_validate(block["kubernetes"])
    assert StorageConfig.model_validate(block["storage"]).root.startswith("s3://")
    assert kube.tolerations[0].effect == "NoSchedule"
    assert set(block["kubernetes"]) == set(KubernetesConfig.model_fields), "docs/kubernetes.md shows every field"


def test_the_readme_helm_values_have_what_the_dagster_chart_reads():
    values = readme_block("# ft_assets helm values")
    user_code = values["dagster-user-deployments"]
    assert user_code["enabled"] is True
    [deployment] = user_code["deployments"]
    assert deployment["name"] == "ft-assets"
    assert {"repository", "tag", "pullPolicy"} <= set(deployment["image"])
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "ft_assets.definitions"]
    assert deployment["port"] == 3030
    assert {"name": "FT_ENV", "value": "k8s"} in deployment["env"]
    assert deployment["envSecrets"] == [{"name": "ft-assets-s3"}]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    assert {v["name"] for v in deployment["volumes"]} == set(mounts)
    # The mounted project YAML is the one FT_ASSETS_CONFIG names, and its storage.local is the volume.
    config_path = next(e["value"] for e in deployment["env"] if e["name"] == "FT_ASSETS_CONFIG")
    assert str(Path(config_path).parent) == mounts["project"]
    assert readme_block("# ft_assets kubernetes block")["storage"]["local"] == mounts["work"]

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    # The chart renders these three into run_monitoring unconditionally once it is enabled.
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] is True and monitoring["freeSlotsAfterRunEndSeconds"] > 0
    assert {"startTimeoutSeconds", "pollIntervalSeconds"} <= set(monitoring)
    assert values["concurrency"]["enabled"] is True and values["concurrency"]["pools"]["defaultLimit"] == 1
    postgres = values["postgresql"]
    assert postgres["enabled"] is True
    assert {"postgresqlUsername", "postgresqlPassword", "postgresqlDatabase"} <= set(postgres)
