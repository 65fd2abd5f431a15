"""The benchmark suite: agent-session throughput under concurrent load, per backend, against the
raw driver and the peers, in one run. Run it as ``python -m benchmarks`` (``make bench``); see
docs/benchmarks.md for the method."""
