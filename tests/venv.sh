#!/usr/bin/env bash
# ensure_venv DIR PACKAGE...: a Python venv at DIR with exactly these pip packages, made
# once and rebuilt when the list changes (the list is recorded in DIR/.complete). Source it.
# Needs python3 with venv and pip, and PyPI the first time.
ensure_venv() {
    local venv="$1"
    shift
    if [ "$(cat "$venv/.complete" 2>/dev/null)" != "$*" ]; then
        echo "creating ${venv#"$(pwd)/"} (pip: $*)"
        rm -rf "$venv"
        python3 -m venv "$venv" &&
            "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" &&
            echo "$*" >"$venv/.complete"
    fi
}
