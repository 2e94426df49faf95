"""FR-013: the experiment harness that compares the mesh with a centralized baseline.

`qtask experiment` (or `python -m qtask.mesh.experiment`) starts a coordinator and N `qtask
node` processes on loopback (free ports, a temporary directory), runs the benchmark circuits of
`circuits` in distributed mode and in the centralized baseline (`harness`), injects the faults of
a seeded schedule (`faults`), and writes a report folder (`report`): report.md, PNG plots and
the raw JSON. The same command and seed give the same plan (circuits, seeds, fault schedule);
timings differ from run to run.
"""
