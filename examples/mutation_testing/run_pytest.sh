#!/bin/sh
# Every mutant through `phalanx pytest --each`: pytest collects once, then each mutant's
# run of the test file is a fork of that warm process with ACTIVE_GREMLIN set; -x stops a
# mutant's run at its first failure. The JUnit report is structured: report.py reads which
# gremlin each test case ran under, and which failed, from it.
#
#   ./run_pytest.sh           # one fork per CPU
#   JOBS=4 ./run_pytest.sh
#
# Exit status: report.py's (0 when every mutant ended as expected.tsv says, 1 when not),
# or phalanx pytest's own when it could not run the tests (2 and up: pytest's codes).
set -u
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
PHALANX="${PHALANX:-phalanx}"
command -v "$PHALANX" >/dev/null 2>&1 || PHALANX="$PYTHON -m phalanx"

# Exit 1 is expected (killed mutants are failed tests); anything above it is not.
$PHALANX pytest -j "${JOBS:-auto}" --each ACTIVE_GREMLIN=g1,g2,g3,g4,g5,g6,g7,g8 --junit-out results.xml \
    -- -x -q -p no:cacheprovider tests >/dev/null
status=$?
if [ "$status" -gt 1 ]; then
    echo "run_pytest.sh: phalanx pytest failed with exit status $status" >&2
    exit "$status"
fi
exec $PYTHON report.py results.xml
