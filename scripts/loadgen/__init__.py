"""The load generator behind scripts/load_test.py: server processes and CPU meters
(procs), the raw HTTP closed-loop client (closed_loop), the ChatEnhanced client simulation
(clients) and the figures and report (report)."""
