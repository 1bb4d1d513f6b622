"""The `launcher` resource: where a checkpoint's training command runs, on this machine or in its own GPU pod."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from typing import Literal

import dagster as dg
from pydantic import Field

from ft_assets.defs.resources import GpuResource
from ft_assets.lib.config import KubernetesConfig, ProjectConfig


class TrainingLauncher(dg.ConfigurableResource):
    """Where checkpoints/<recipe> runs its training command.

    target: `local`, a subprocess of the step (PipesSubprocessClient); `kubernetes`, a pod of its own
        with the GPUs the `gpu` resource asks for (PipesK8sClient), which needs the project's
        `kubernetes:` block and an s3:// storage root. Defaults to `kubernetes` when FT_ENV=k8s is set
        where the definitions load; a run can also set it in the launchpad's resource config.
    kubeconfig_file, kube_context: how a `kubernetes` launcher outside the cluster finds it (default:
        in a pod, its service account; elsewhere KUBECONFIG, else ~/.kube/config).
    """

    target: Literal["local", "kubernetes"] = Field("local", description="local or kubernetes")
    kubeconfig_file: str | None = Field(None, description="kubeconfig for a launcher outside the cluster")
    kube_context: str | None = Field(None, description="the kubeconfig context to use")

    @property
    def in_pod(self) -> bool:
        return self.target == "kubernetes"

    def require_kubernetes(self, config: ProjectConfig) -> KubernetesConfig | None:
        """The project's `kubernetes:` block when training runs in a pod; None when it runs here.

        Raises:
            dg.Failure: the block is missing, or storage.root is a local folder the pod cannot read.
        """
        if not self.in_pod:
            return None
        if config.kubernetes is None:
            raise dg.Failure(description="the kubernetes launcher (FT_ENV=k8s) needs a `kubernetes:` block "
                                         f"(at least `image:`) in {config.source}")
        if config.remote_root is None:
            raise dg.Failure(description="the kubernetes launcher (FT_ENV=k8s) needs `storage.root: s3://...` in "
                                         f"{config.source}: the training pod cannot read this machine's {config.root}")
        return config.kubernetes

    def train(self, context: dg.AssetExecutionContext, gpu: GpuResource, spec: str,
              kube: KubernetesConfig | None) -> dg.PipesClientCompletedInvocation:
        """Runs the training command on SPEC (a local path, or an s3:// URI for a pod) and waits for it."""
        if kube is None:
            with tempfile.TemporaryDirectory(prefix="ft_assets_pipes_") as folder:
                client = dg.PipesSubprocessClient(message_reader=QuietFileMessageReader(os.path.join(folder, "messages")))
                return client.run(command=gpu.training_command(sys.executable, spec), context=context)
        # dagster_k8s and the Kubernetes client load here, not with the code location (most runs are local).
        from dagster_k8s import PipesK8sClient

        from ft_assets.defs.training.kubernetes import run_in_pod

        # The image's python, not this machine's interpreter path.
        client = PipesK8sClient(kubeconfig_file=self.kubeconfig_file, kube_context=self.kube_context)
        return run_in_pod(context, client, kube, gpu.training_command("python", spec), gpus=gpu.processes)


class QuietFileMessageReader(dg.PipesFileMessageReader):
    """Dagster's file message reader, looking for new messages every POLL_SECONDS where Dagster's looks
    every 10 ms: 100 wake-ups a second of the step's process while the model trains, on a CPU machine
    taken from the threads it trains on (the step process used 0.47 s of CPU per 40 s of training
    with Dagster's reader, 0.07 s with this one; bench/RESULTS.md has the whole-run overhead). The end
    of the session wakes it at once, and a line the training process has not finished writing is read
    once it is whole (Dagster's would hand the half line to json.loads)."""

    POLL_SECONDS = 0.25

    def _reader_thread(self, handler, is_resource_complete: threading.Event) -> None:
        try:
            with open(self._path, encoding="utf-8") as messages:
                while True:
                    start = messages.tell()
                    line = messages.readline()
                    if line.endswith("\n") or (line and is_resource_complete.is_set()):
                        handler.handle_message(json.loads(line))
                    elif is_resource_complete.is_set():
                        return
                    else:
                        messages.seek(start)
                        is_resource_complete.wait(self.POLL_SECONDS)
        except Exception:
            handler.report_pipes_framework_exception(f"{self.__class__.__name__} reader thread", sys.exc_info())
            raise


def default_launcher() -> TrainingLauncher:
    """`kubernetes` when FT_ENV=k8s (the documented shortcut for deployments), else `local`."""
    return TrainingLauncher(target="kubernetes" if os.environ.get("FT_ENV") == "k8s" else "local")
