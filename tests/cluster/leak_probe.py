"""Probe run by test_no_leftovers.py in a child pytest process; not collected on its own.

Run (what the parent test does):
    FTOP_CLUSTER=own FTOP_PROBE_OUT=/tmp/x.json python -m pytest tests/cluster/leak_probe.py
FTOP_PROBE_HANG=1 makes it wait (to be signalled) after writing the PIDs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.cluster.cluster import ControlPlane
from tests.cluster.process import pid_cmdline


def test_probe(kube_cluster: ControlPlane) -> None:
    assert kube_cluster.owned, "the probe must own its control plane (FTOP_CLUSTER=own)"
    assert kube_cluster.readyz()
    for comp in kube_cluster.components.values():  # what the parent compares against later
        assert comp.pid is not None and pid_cmdline(comp.pid) == comp.argv
    out = Path(os.environ["FTOP_PROBE_OUT"])
    record = {
        "pids": kube_cluster.pids(),
        "argv": {n: c.argv for n, c in kube_cluster.components.items()},
        "state_dir": str(kube_cluster.state_dir),
        "startup_seconds": kube_cluster.startup_seconds,
    }
    out.with_suffix(".tmp").write_text(json.dumps(record))
    out.with_suffix(".tmp").replace(out)
    if os.environ.get("FTOP_PROBE_HANG") == "1":
        time.sleep(600)
