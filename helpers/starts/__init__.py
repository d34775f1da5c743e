"""Fewer, parallel starts (issue 22): on a real box the time of a bring-up is the time of its
server starts, so this package decides which starts are needed and runs the independent ones at
once.

featurefirst  `make all-features` in the workflow's order: Stage A, one Stage B with every
              applicable feature on (each feature's cell decided from its own evidence line),
              flashcomm1 on its own; isolation by bisection only on failure or missing evidence
reuse         a fresh PASS of the same command (checkpoint, roots, versions) is reused, not rerun;
              a live server of ours started with exactly a step's command serves that step
groups        disjoint NPU groups, ports and HCCL port ranges for runs at once (PARALLEL)
runset        runs a set of helper commands, one at a time or at once; Ctrl-C stops them all
cells         the matrix's view of the runs that decided a feature (data only)
live          `make serve`: the documented command left running for the steps that can share it
"""
