"""The HTTP service of ``auralsam2 serve`` as a Ray Serve deployment: one replica per GPU.

Every replica runs the same :class:`~auralsam2_service.job_service.JobService` and Starlette app
(:func:`~auralsam2_service.app.create_app`) as ``auralsam2 serve``, with its own model, queue and
worker. Serve's router spreads requests over the replicas, so a job is run by the replica that
took it, and a status or results request may reach another one. Each replica therefore keeps
its jobs in ``<AURALSAM2_SERVER_STATE>/replica-<rank>`` on a volume **shared by all replicas**
and answers for the others' jobs from their files. A replica that Serve restarts gets the same
rank, so it picks up its own interrupted jobs (the service's usual recovery). Keep
``num_replicas`` fixed: a slot whose replica is scaled away leaves its queued jobs waiting.

    serve run auralsam2_service.ray_serve:build_app replicas=2 num_gpus=1

Settings are those of ``auralsam2 serve`` (``AURALSAM2_SERVER_*`` and ``AURALSAM2_*`` model
variables in every Ray node's environment); ``build_app`` arguments override the model.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from ray import serve

from auralsam2_core.inference.results import read_results
from auralsam2_core.model_spec import ModelSpec

from .app import create_app
from .config import ServiceSettings
from .job_service import Job, JobService, Refused, job_results

_JOB_ID = re.compile(r"[0-9a-f]{1,64}")
MODEL_ARGS = ("sam2_config", "sam2_checkpoint", "fuser_checkpoint", "fuser_config",
              "image_size", "device")


class SharedStateService(JobService):
    """A replica's service that also answers for jobs other replicas took (their files)."""

    def __init__(self, settings: ServiceSettings, served: ModelSpec, *, root: Path,
                 **kwargs) -> None:
        super().__init__(settings, served, **kwargs)
        self.root = Path(root)

    def _owner(self, job_id: str) -> Path | None:
        if not _JOB_ID.fullmatch(job_id):
            return None
        for d in sorted(self.root.glob("replica-*")):
            if (d / "jobs" / f"{job_id}.json").is_file():
                return d
        return None

    def get(self, job_id: str) -> Job:
        if job_id in self.jobs:
            return super().get(job_id)
        owner = self._owner(job_id)
        if owner is None:
            raise Refused(404, f"no job {job_id!r}")
        try:
            return Job(**json.loads((owner / "jobs" / f"{job_id}.json").read_text()))
        except (OSError, ValueError, TypeError):  # being rewritten by its owner: ask again
            raise Refused(503, "job state is being updated; retry", retry_after=1) from None

    def results(self, job_id: str) -> dict:
        if job_id in self.jobs:
            return super().results(job_id)
        job = self.get(job_id)
        if job.status != "done":
            raise Refused(409, f"job {job_id} is {job.status}"
                               + (f": {job.error}" if job.error else ""))
        return read_results(job_results(self._owner(job_id), job_id).final)


@serve.deployment(max_ongoing_requests=64, health_check_period_s=30)
@serve.ingress()
class AuralSAM2Service:
    """One replica: loads the model before taking traffic, then serves the HTTP API."""

    def __init__(self, model_overrides: dict | None = None) -> None:
        import torch

        ctx = serve.get_replica_context()
        rank = getattr(ctx.rank, "rank", ctx.rank)
        settings = ServiceSettings.from_env()
        served = ModelSpec.from_env(**(model_overrides or {}))
        if served.device != "cuda" and not torch.cuda.is_available():
            torch.set_num_threads(max(1, int(_replica_cpus())))
        self.service = SharedStateService(
            dataclasses.replace(settings, state_dir=Path(settings.state_dir) / f"replica-{rank}"),
            served, root=Path(settings.state_dir))
        _ = self.service.model

    def __serve_build_asgi_app__(self):
        return create_app(self.service)


def _replica_cpus() -> float:
    """CPUs Ray reserved for this replica (torch threads on CPU-only replicas)."""
    import ray

    ids = ray.get_runtime_context().get_assigned_resources()
    return ids.get("CPU", 1)


def build_app(args: dict[str, str] | None = None) -> serve.Application:
    """Application builder for ``serve run`` / a RayService ``import_path``. Arguments (all
    optional strings): ``replicas`` (1), ``num_gpus`` per replica (1 when the cluster has GPUs,
    else 0), ``num_cpus`` per replica (1), and model overrides ``sam2_config``,
    ``sam2_checkpoint``, ``fuser_checkpoint``, ``fuser_config``, ``image_size``, ``device``."""
    import ray

    args = dict(args or {})
    unknown = set(args) - {"replicas", "num_gpus", "num_cpus", *MODEL_ARGS}
    if unknown:
        raise ValueError(f"unknown build_app arguments {sorted(unknown)}")
    if "num_gpus" in args:
        gpus = float(args["num_gpus"])
    else:
        gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) else 0.0
    overrides = {k: args[k] for k in MODEL_ARGS if args.get(k)}
    if "image_size" in overrides:
        overrides["image_size"] = int(overrides["image_size"])
    return AuralSAM2Service.options(
        num_replicas=int(args.get("replicas", 1)),
        ray_actor_options={"num_gpus": gpus, "num_cpus": float(args.get("num_cpus", 1))},
    ).bind(overrides)
