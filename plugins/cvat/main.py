"""nuclio entry point of the AuralSAM2 CVAT function (``handler: main:handler``).

``init_context`` loads the model once per worker into ``context.user_data``; ``handler``
answers CVAT's Automatic annotation (``{"image": ...}``), direct ``{"task_id": N}`` calls and
CVAT webhooks. Configuration comes from the environment: see manifests/cvat/README.md.
"""

from __future__ import annotations

import json
import os

from auralsam2_core.model_spec import ModelSpec, load_model
from auralsam2_core.serving.engines import engine_from_env
from auralsam2_plugins.cvat.config import CvatFunctionSettings
from auralsam2_plugins.cvat.service import CvatFunctionService, connect


def init_context(context) -> None:
    settings = CvatFunctionSettings.from_env()
    if os.environ.get("CVAT_ACCESS_TOKEN") or os.environ.get("CVAT_PASSWORD"):
        context.logger.warn("auralsam2: the CVAT credentials are in the function's environment, "
                            "hence in its nuclio spec and container labels; mount them as a "
                            "file and set CVAT_ACCESS_TOKEN_FILE instead (manifests/cvat/"
                            "deploy.sh does)")
    # A CVAT older than the function needs, or refusing its credentials, stops the start here.
    api = connect(settings, lambda level, msg: getattr(
        context.logger, "warn" if level == "warning" else level)(f"auralsam2: {msg}"))
    context.logger.info("auralsam2: loading the model")
    spec = ModelSpec.from_env()
    # AURALSAM2_SERVER_URL set: the shared model service runs the model, none is loaded here.
    engine = engine_from_env(lambda: load_model(spec))
    context.user_data.service = CvatFunctionService(settings, engine, api=api,
                                                    logger=context.logger)
    where = getattr(engine, "url", None) or f"{spec.sam2_config} on {engine.model.device}"
    context.logger.info(f"auralsam2: ready (function '{settings.function_name}', model "
                        f"{where}, CVAT {settings.url or 'not set'})")


def handler(context, event):
    status, body = context.user_data.service.handle(event.body, getattr(event, "headers", None))
    return context.Response(body=json.dumps(body), headers={}, content_type="application/json",
                            status_code=status)
