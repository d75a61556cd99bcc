#!/usr/bin/env bash
# Idempotent set-up of rumpvm on a fresh Debian machine: the apt packages it
# builds and mounts with (once), a .venv, and an editable install of the
# project with its test extras and the cffi extension hypercall/_hyper*.so
# built in place (again only when the build inputs change).
# Run it directly, or source it (scripts/run-vm and scripts/run-tests do).
set -euo pipefail

rumpvm_setup() {
    # gdb and binutils (readelf): tests/test_coredump.py reads core files back with them;
    # valgrind: `rumpvm trace record` runs programs under its lackey tool.
    local root pkgs=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv gdb binutils valgrind) missing=() p
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cd "$root"

    # 1. System packages: apt-get only if something is missing.
    for p in "${pkgs[@]}"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]] && ! pkg-config --exists fuse3 2>/dev/null; then
        missing+=(libfuse3-dev pkg-config)
    fi
    if [[ ${#missing[@]} -gt 0 ]]; then
        local sudo=()
        [[ $(id -u) -eq 0 ]] || sudo=(sudo)
        echo "setup: installing ${missing[*]}" >&2
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi

    # 2. The virtual environment (recreated if its interpreter is broken).
    if ! .venv/bin/python -c '' 2>/dev/null; then
        echo "setup: creating .venv" >&2
        rm -rf .venv
        "${PYTHON:-python3}" -m venv .venv
    fi

    # 3. Editable install, redone when the build inputs change or the
    #    extension is missing; the stamp holds a hash of those inputs (and of
    #    the list of packages, which the editable finder fixes at install).
    local stamp=.venv/.rumpvm-setup hash
    hash="$( (cat pyproject.toml setup.py hypercall/_build.py hypercall/uffd.c hypercall/uffd.h; ls -d ./*/__init__.py) | sha256sum | cut -d' ' -f1)"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]] || ! compgen -G 'hypercall/_hyper*.so' >/dev/null; then
        echo "setup: pip install -e '.[test]' (takes a few minutes the first time)" >&2
        rm -f "$stamp" hypercall/_hyper*.so  # no stale build may shadow the new one
        .venv/bin/python -m pip install -q --progress-bar off -e '.[test]'
        # setuptools' editable mode builds cffi_modules in place; make sure.
        compgen -G 'hypercall/_hyper*.so' >/dev/null || .venv/bin/python setup.py -q build_ext --inplace
        .venv/bin/python -c 'import hypercall'
        echo "$hash" >"$stamp"
    fi
}

rumpvm_setup
