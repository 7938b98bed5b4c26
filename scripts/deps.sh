#!/usr/bin/env bash
# Switchyard's system dependencies, installed idempotently. Sourced by scripts/up and scripts/test.
# Installs only what is missing; says clearly what it cannot do and fails.
set -euo pipefail

sy_need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "switchyard: this needs root (network namespaces, nftables); run as root" >&2
    exit 1
  fi
}

# sy_apt PKG... : install the Debian packages that are not installed yet.
sy_apt() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "switchyard: installing ${missing[*]}" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      echo "switchyard: could not install ${missing[*]} with apt-get; install them and retry" >&2
      exit 1
    fi
  fi
}

sy_cargo() {
  if ! command -v cargo >/dev/null; then
    echo "switchyard: cargo not found; install Rust (https://rustup.rs) and retry" >&2
    exit 1
  fi
}

sy_kubectl() {
  if ! command -v kubectl >/dev/null; then
    echo "switchyard: kubectl not found on PATH; the compatibility tests need it (v1.32 expected at /usr/bin/kubectl)" >&2
    exit 1
  fi
}

# sy_pip MODULE PACKAGE : make `python3 -c 'import MODULE'` work, installing PACKAGE with pip
# (only when the import fails). For the real-client tests (the Python `kubernetes` client).
sy_pip() {
  local module="$1" package="$2"
  if python3 -c "import ${module}" >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v python3 >/dev/null; then
    sy_apt python3
  fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    sy_apt python3-pip
  fi
  echo "switchyard: installing the Python package ${package} with pip" >&2
  # Debian/Ubuntu's python3 refuses system-wide pip installs (PEP 668); this is a test machine,
  # so retry with --break-system-packages rather than fail.
  if ! python3 -m pip install --quiet "${package}" 2>/dev/null \
    && ! python3 -m pip install --quiet --break-system-packages "${package}"; then
    echo "switchyard: could not install the Python package ${package} (python3 -m pip install ${package}); install it and retry" >&2
    exit 1
  fi
  if ! python3 -c "import ${module}" >/dev/null 2>&1; then
    echo "switchyard: pip installed ${package} but python3 still cannot import ${module}; check which python3 pip installs for" >&2
    exit 1
  fi
}
