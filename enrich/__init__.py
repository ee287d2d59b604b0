"""Kubernetes layer and enrichment: who is talking.

``rawcap k8s-watch`` lists and watches the API and publishes compact records to
``rawcap.k8s`` plus per-node capture filters to ``rawcap.control``; ``rawcap enrich`` joins
``rawcap.packets``, ``rawcap.k8s`` and ``rawcap.procs`` into ``rawcap.flows``; ``rawcap
flows`` reads them back. Wire formats live in ``schemas.k8s`` and ``schemas.flows``.
"""

from ._consumer import GROUP, Election, Enricher, run_enrich, run_k8s_watch
from ._filters import CAPTURE_NOTHING, FilterPlanner, Selection, compute_filters
from ._flows import Flow, FlowTable
from ._lease import LeaseElector
from ._model import KINDS, Change, ObjectCache, owner_of, to_record
from ._procs import ProcIndex
from ._watch import Watcher, WatchStats, api_client

__all__ = (
    "CAPTURE_NOTHING",
    "GROUP",
    "KINDS",
    "Change",
    "Election",
    "Enricher",
    "FilterPlanner",
    "Flow",
    "FlowTable",
    "LeaseElector",
    "ObjectCache",
    "ProcIndex",
    "Selection",
    "WatchStats",
    "Watcher",
    "api_client",
    "compute_filters",
    "owner_of",
    "run_enrich",
    "run_k8s_watch",
    "to_record",
)
