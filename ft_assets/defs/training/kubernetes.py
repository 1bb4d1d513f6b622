"""A checkpoint's training command in its own GPU pod, through Dagster Pipes (the `kubernetes` launcher).

PipesK8sClient creates the pod (from the run's pod, or from any machine with a kubeconfig),
passes the Pipes context in environment variables, reads rank 0's Pipes messages from the pod's
log, and deletes the pod when it ends, fails or the run is terminated. The pod cannot read the
Dagster machine's disk, so the spec, the splits and the checkpoint travel through the s3://
storage root (see docs/kubernetes.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg
from dagster_k8s import PipesK8sClient
from dagster_k8s.pipes import DEFAULT_CONTAINER_NAME

from ft_assets.lib.config import KubernetesConfig

# torch DataLoader workers hand batches to the trainer through /dev/shm, and NCCL keeps its
# same-node buffers there. A container gets 64 MiB of it by default, which a multi-GPU job
# exhausts ("Bus error", NCCL "unhandled system error"); a memory-backed emptyDir lifts that cap.
# What the job puts there counts against the pod's memory.
SHM_VOLUME = "dshm"


def pod_spec(kube: KubernetesConfig, gpus: int) -> dict:
    """The base_pod_spec for PipesK8sClient.run: one container requesting `gpus` GPUs.

    PipesK8sClient takes the first container as the one it talks to: it sets its image and command
    (from run's arguments) and appends the Pipes variables to its env. Keys may be camelCase, as in
    a pod's YAML; dagster_k8s converts them.

    Raises:
        ValueError: gpus is below 1.
    """
    if gpus < 1:
        raise ValueError(f"a training pod needs at least one GPU, not {gpus}")
    container: dict = {
        "name": DEFAULT_CONTAINER_NAME,
        "imagePullPolicy": kube.image_pull_policy,
        # Extended resources such as GPUs are set as limits only: Kubernetes makes the request equal
        # to the limit (a GPU cannot be overcommitted), and the device plugin hands the container
        # exactly these devices (CUDA_VISIBLE_DEVICES covers them alone).
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}],
    }
    if kube.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": name}} for name in kube.env_from_secrets]
    spec: dict = {
        "containers": [container],
        # A failed training run is reported, not retried in place: Dagster's retries decide.
        "restartPolicy": "Never",
        # The kubelet kills a pod running longer than this and frees its GPUs, whatever happens to
        # the step that waits for it (see run_in_pod).
        "activeDeadlineSeconds": kube.timeout_seconds,
        "volumes": [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}],
    }
    if kube.node_selector:
        spec["nodeSelector"] = dict(kube.node_selector)
    if kube.tolerations:
        spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in kube.tolerations]
    if kube.service_account_name:
        spec["serviceAccountName"] = kube.service_account_name
    return spec


def run_in_pod(
    context: dg.AssetExecutionContext,
    client: PipesK8sClient,
    kube: KubernetesConfig,
    command: Sequence[str],
    gpus: int,
    env: Mapping[str, str] | None = None,
) -> dg.PipesClientCompletedInvocation:
    """Runs `command` in a pod with `gpus` GPUs and waits for it; what the pod reported through Pipes.

    Args:
        context: the checkpoint asset's context (the pod is named after its run and step).
        client: a PipesK8sClient.
        kube: the project's `kubernetes:` block (image, namespace, scheduling, timeout).
        command: the container's command, e.g. ["python", "-m", "ft_assets.lib.training", "--processes=4",
            "s3://.../spec.json"] (GpuResource.training_command); the image's entrypoint is replaced.
        gpus: the `nvidia.com/gpu` limit, one per training process.
        env: extra environment variables for the container (the Pipes ones are added by the client).

    Returns:
        The invocation; get_materialize_result() holds rank 0's reported metadata.

    Raises:
        DagsterK8sError: the pod failed (with its last 100 log lines), timed out or vanished.
        DagsterPipesExecutionError: the pod ended without closing its Pipes session.
    """
    return client.run(
        context=context,
        image=kube.image,
        command=list(command),
        namespace=kube.namespace,
        env=dict(env or {}),
        base_pod_spec=pod_spec(kube, gpus),
        # Bounds only the final wait for termination: by default the client first follows the pod's
        # log until the container exits, so activeDeadlineSeconds (pod_spec) is what limits training.
        pod_wait_timeout=kube.timeout_seconds,
    )
