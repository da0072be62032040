# Sourced by scripts/test and scripts/demo: sets $python to a Python that may install
# packages (the one at hand, or a .venv made here when it refuses: Debian's own, PEP 668),
# and defines apt_install for what only apt provides.

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

python="${PYTHON:-python3}"
externally_managed() {
    "$1" - <<'PY'
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if not in_venv and os.path.exists(marker) else 1)
PY
}
if ! "$python" -m pip --version >/dev/null 2>&1 || externally_managed "$python"; then
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$python" -m venv .venv; }
    fi
    python=.venv/bin/python
fi
