"""The load generator's parts; ``bench/loadgen.py`` is its command line.

* ``measure`` — CPU, memory and latency accounting, the same in every scenario.
* ``client``  — the picows side of the chatd protocol: tokens, requests, listeners.
* ``workers`` — forked generator processes and the pipes to them.
* ``fanout``, ``ingest``, ``live``, ``connect`` — one module per scenario.
"""
