"""Tools for tests, the demo and benchmarks: real mail servers on loopback. Never installed."""
