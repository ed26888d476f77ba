"""The operator's kopf settings (handlers.configure, the one startup hook)."""

from __future__ import annotations

import asyncio

import kopf
from finetune_operator import handlers


def configured() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo(options={"metrics_port": 0, "standalone": True})
    asyncio.run(handlers.configure(settings=settings, memo=memo))
    return settings


def test_children_are_filtered_by_the_api_server() -> None:
    settings = configured()
    selector = "app.kubernetes.io/managed-by=finetune-operator"
    assert selector == handlers.MANAGED_SELECTOR
    for group, version, plural in (("batch", "v1", "jobs"), ("", "v1", "pods")):
        resource = kopf.Resource(group, version, plural, namespaced=True)
        assert settings.watching.label_selectors.collect(resource) == [selector], plural
    # FineTuneJobs and runtimes are all the operator's: no selector.
    ftj = kopf.Resource("finetune.dev", "v1alpha1", "finetunejobs", namespaced=True)
    assert settings.watching.label_selectors.collect(ftj) == []


def test_no_diff_base_is_kept() -> None:
    settings = configured()
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, handlers.NoDiffBase)
    body = kopf.Body({"metadata": {"name": "a", "annotations": {"x": "y"}}, "spec": {"big": list(range(1000))}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
