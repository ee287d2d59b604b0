"""The node capture agent: TPACKET_V3 ring + eBPF filter -> batches -> node FIFO -> Kafka.

``rawcap capture`` runs :class:`Agent`; docs/capture.md documents ring defaults, the
interface set, the buffer layout, capabilities and metrics.
"""

from ._fifo import Fifo
from .agent import Agent, Summary

__all__ = ("Agent", "Fifo", "Summary")
