"""The HTTP API and web page of a trained run (``cxrfuse serve RUN_DIR``).

    from cxrfuse.serve import create_app, Service
    app = create_app("runs/exp/runs/multimodal-seed0")     # a FastAPI app; uvicorn serves it

:class:`Service` is the same work as a Python API (predict, explain, draft); it is built on
:class:`cxrfuse.inference.Predictor`, the path ``cxrfuse predict`` takes too.
"""

from cxrfuse.serve.app import Limits, app_from_env, create_app
from cxrfuse.serve.runner import serve
from cxrfuse.serve.service import Service, model_card

__all__ = ["Limits", "Service", "app_from_env", "create_app", "model_card", "serve"]
