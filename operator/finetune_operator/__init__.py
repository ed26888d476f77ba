"""finetune-operator: turns FineTuneJob resources into multi-node training Jobs.

Layers (each imports only the ones below it; checked by import-linter):
  handlers (kopf) -> reconcile -> plan (status computation) -> builders / resolve
  -> api (pydantic models) / constants / views.  `kube` is the only module that talks to the API
  server; `progress` is the only one that talks to trainer pods.
"""

__version__ = "0.1.0"
