"""fetch_progress against the trainer's own /progress endpoint (finetune_trainer.metrics), live."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest
from finetune_operator.progress import fetch_progress
from finetune_trainer.metrics import Progress as TrainerProgress
from finetune_trainer.metrics import TrainerMetrics


@pytest.fixture
def server() -> Iterator[str]:
    """The real trainer metrics server, on a free loopback port, showing step 40 of 160."""
    metrics = TrainerMetrics("job", "ns", 0)
    metrics.update(TrainerProgress(phase="Running", step=40, total_steps=160, epoch=0.5, percent=25.0, loss=0.7123, tokens_per_second=2750.5, eta_seconds=130, trained_tokens=81920))
    port = metrics.serve(0, with_progress=True, host="127.0.0.1")
    assert port is not None
    yield f"http://127.0.0.1:{port}"
    metrics.close()


def test_fetch_progress_from_a_live_endpoint(server: str) -> None:
    async def go() -> tuple[object, object, object]:
        async with aiohttp.ClientSession() as session:
            ok = await fetch_progress(session, server + "/progress")
            missing = await fetch_progress(session, server + "/nope")
            down = await fetch_progress(session, "http://127.0.0.1:9/progress")
            return ok, missing, down

    ok, missing, down = asyncio.run(go())
    assert ok is not None and ok.percent == 25.0 and ok.loss == 0.7123 and ok.trained_tokens == 81920  # type: ignore[attr-defined]
    assert ok.stage == "Running" and ok.eta_seconds == 130  # type: ignore[attr-defined]
    assert missing is None and down is None


def test_progress_targets_pick_rank0_of_the_current_attempt() -> None:
    from finetune_operator.reconcile import Indexes, Reconciler

    from tests.operator.helpers import CONFIG, RUNTIMES, pod

    def rec(phase: str, attempt: int = 0) -> dict[str, object]:
        return {"uid": "u", "generation": 1, "deleting": False, "spec": {}, "status": {"phase": phase, "attempt": attempt}}

    jobs = {("ns", "a"): [rec("Running", 1)], ("ns", "b"): [rec("Succeeded")], ("ns", "c"): [rec("Validating")]}
    pods = {
        ("ns", "a"): [pod("a-0-old", index=0, attempt=0, pod_ip="10.0.0.9"), pod("a-1", index=1, attempt=1, pod_ip="10.0.0.8"), pod("a-0", index=0, attempt=1, pod_ip="10.0.0.7")],
        ("ns", "b"): [pod("b-0", index=0, attempt=0, phase="Succeeded")],
    }
    r = Reconciler(kube=None, config=CONFIG)  # type: ignore[arg-type]  # these methods do no I/O
    r.indexes = Indexes(jobs=jobs, runtimes=RUNTIMES, children={}, pods=pods)
    assert r.progress_targets() == [(("ns", "a"), "http://10.0.0.7:9400/progress")]
    assert sorted(r.active_keys()) == [("ns", "a"), ("ns", "c")]


def test_reads_the_trainers_own_progress_document() -> None:
    """Cross-contract: the document finetune_trainer serves at /progress parses into the status."""
    from finetune_operator.progress import parse_progress
    from finetune_trainer.metrics import Progress as TrainerProgress

    doc = TrainerProgress(phase="Uploading", step=30, total_steps=120, loss=0.5, tokens_per_second=1000.0, eta_seconds=12.7, trained_tokens=999).to_json()
    p = parse_progress(doc)
    assert p is not None and (p.step, p.total_steps, p.percent, p.stage, p.trained_tokens, p.eta_seconds) == (30, 120, 25.0, "Uploading", 999, 12)


def test_diverged_loss_from_the_real_trainer_endpoint_is_dropped() -> None:
    """A NaN/Infinity loss (a diverged run) never reaches the status, from the real trainer endpoint or raw JSON."""
    import math

    from finetune_operator.progress import parse_progress
    from finetune_trainer.metrics import Progress as TrainerProgress
    from finetune_trainer.metrics import TrainerMetrics

    metrics = TrainerMetrics("job", "ns", 0)
    metrics.update(TrainerProgress(phase="Running", step=5, total_steps=10, loss=math.nan, eval_loss=math.inf, tokens_per_second=-math.inf, eta_seconds=math.inf))
    port = metrics.serve(0, with_progress=True, host="127.0.0.1")
    assert port is not None
    try:

        async def go() -> object:
            async with aiohttp.ClientSession() as session:
                return await fetch_progress(session, f"http://127.0.0.1:{port}/progress")

        p = asyncio.run(go())
    finally:
        metrics.close()
    assert p is not None
    assert (p.step, p.percent, p.loss, p.eval_loss, p.tokens_per_second, p.eta_seconds) == (5, 50.0, None, None, None, None)  # type: ignore[attr-defined]
    json.dumps(p.model_dump(by_alias=True, exclude_none=True), allow_nan=False)  # type: ignore[attr-defined]  # raises on NaN
    # An older trainer wrote the bare tokens (Python's json.dumps default); json.loads accepts them.
    raw = parse_progress(json.loads('{"step": 5, "totalSteps": 10, "loss": NaN, "evalLoss": Infinity, "etaSeconds": -Infinity}'))
    assert raw is not None and (raw.step, raw.percent, raw.loss, raw.eval_loss, raw.eta_seconds) == (5, 50.0, None, None, None)
    # String spellings too (a trainer that stringifies its floats).
    assert parse_progress({"step": 1, "loss": "nan", "etaSeconds": "inf"}) == parse_progress({"step": 1})


def test_a_status_body_with_nan_is_refused_before_it_is_sent() -> None:
    """Kube never sends NaN (the API server would reject that patch and every later one)."""
    import math

    from finetune_operator.kube import Kube, KubeError

    kube = Kube(credentials=lambda: (_ for _ in ()).throw(AssertionError("no request may be made")))
    with pytest.raises(KubeError, match="not valid JSON"):
        asyncio.run(kube._run("PATCH", "/apis/x/status", {"status": {"progress": {"loss": math.nan}}}))


def test_an_endless_progress_answer_is_cut_off_not_held() -> None:
    """A pod running someone's image answers /progress with an endless body: the operator reads
    at most MAX_PROGRESS_BYTES of it and reports nothing."""
    from aiohttp import web
    from finetune_operator.progress import MAX_PROGRESS_BYTES

    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b" " * 65536
        try:
            for _ in range(1024):  # 64 MiB if read to the end
                await resp.write(chunk)
                sent.append(len(chunk))
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    async def go() -> object:
        app = web.Application()
        app.router.add_get("/progress", endless)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session:
                return await fetch_progress(session, f"http://127.0.0.1:{port}/progress")
        finally:
            await runner.cleanup()

    assert asyncio.run(go()) is None
    assert MAX_PROGRESS_BYTES <= 64 * 1024
    assert sum(sent) < 1024 * 65536, "the whole 64 MiB answer was read (the server got to write all of it)"
