"""rawcap's shared plumbing: what more than one service needs, each package owning one thing.

- ``cli``, ``config``, ``log``, ``timeparse``: the ``rawcap`` command line, the values file
  (every key declared once), logging, time arguments;
- :mod:`rawcap.kafka`: Kafka access (client settings and topics, the wire codec, the
  plaintext client of bounded reads, the one produce path, aiokafka's internals in one
  checked module, why a secured broker refused, consumer-group lag gauges);
- :mod:`rawcap.window`: the time-window reader every command that reads packets goes
  through (lanes, merge, follow);
- :mod:`rawcap.pcap`: pcap and pcapng (layouts, reader, writers, batch-body converter);
- one module or package per on-disk or object format, writer and reader together:
  :mod:`rawcap.segments` (the node FIFO buffer), :mod:`rawcap.archive` (the long-term
  archive), :mod:`rawcap.snapshots` (snapshots);
- ``packet``, ``filters``, ``workloads``: L2-L4 header parsing, packet filters, the workload
  index built from ``rawcap.k8s``;
- :mod:`rawcap.stack`: the local stack (Kafka, MinIO, Kubernetes) for demos and tests;
- ``malloc``, ``hooks``: allocator settings, test-only hooks.

It imports ``schemas`` and nothing of the services (capture, enrich, archiver, dissector,
forensics, history), which import it and ``schemas``, never each other
(``tests/test_architecture.py``).
"""

__all__ = ("__version__",)

__version__ = "0.1.0"
