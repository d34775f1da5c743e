"""The glue of the CI pipeline in ci/ascend/ (`python -m helpers.ci ...`): the job matrix from the
models list, whether the image changed since the last validated run, and the job summary (the
feature matrix and the cells that changed since the last run). The checklist itself runs as the
make targets a person runs."""
