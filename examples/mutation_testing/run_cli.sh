#!/bin/sh
# Every mutant through `phalanx map`, GNU parallel style: a fresh `python -m pytest` per
# gremlin, with ACTIVE_GREMLIN set to it, one JSONL record per job; then the report.
#
#   ./run_cli.sh            # one job per CPU
#   JOBS=4 ./run_cli.sh
#
# Exit status: report.py's (0 when every mutant ended as expected.tsv says, 1 when not),
# or phalanx map's own when it could not run the jobs.
set -u
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
PHALANX="${PHALANX:-phalanx}"
command -v "$PHALANX" >/dev/null 2>&1 || PHALANX="$PYTHON -m phalanx"

# --env ACTIVE_GREMLIN={} uses the argument, so it is not also appended to the command.
# pytest's output goes to results.jsonl (the report reads the failing test from it).
# phalanx map's exit status is the number of failed jobs, here of killed mutants.
$PHALANX map -j "${JOBS:-100%}" --env ACTIVE_GREMLIN={} --results results.jsonl \
    "$PYTHON -m pytest -x -q -p no:cacheprovider tests" \
    ::: g1 g2 g3 g4 g5 g6 g7 g8 >/dev/null
status=$?
if [ "$status" -gt 100 ]; then  # 255: bad usage; 130, 143: interrupted
    echo "run_cli.sh: phalanx map failed with exit status $status" >&2
    exit "$status"
fi
exec $PYTHON report.py results.jsonl
