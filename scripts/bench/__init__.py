"""The benchmark tooling of cache-server: bench-compare, ab-compare, redis-set-cost, instructions-per-call.

Each tool is a module run as `python3 -m bench.<module>` with scripts/ on PYTHONPATH; the executables of the
same names in scripts/ do exactly that. Shared pieces: common (ports, processes, binaries, logging), loadgen
and h2load (the two load generators), report (table and docs), sections (bench-compare's measurements).
"""
