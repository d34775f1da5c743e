"""What people look at: the phases of every server start (phases.py, rules in phases.yaml), read
from serve.log's own stamps and kept in evidence.json; `make status` prints them (starts.py); the
report's timeline.png and capacity.png are drawn from the same data (charts.py, matplotlib)."""
