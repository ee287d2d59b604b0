"""The node capture agent: TPACKET_V3 ring + eBPF filter -> batches -> node FIFO -> Kafka.

``rawcap capture`` runs :class:`Agent`; docs/capture.md documents ring defaults, the
interface set, the buffer layout, capabilities and metrics.
"""

from ._fifo import SEGMENT_SUFFIX, STATE_FILE, Fifo, segment_name
from .agent import Agent, Summary

__all__ = ("SEGMENT_SUFFIX", "STATE_FILE", "Agent", "Fifo", "Summary", "segment_name")
