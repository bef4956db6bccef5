# shellcheck shell=bash
# Source me (bash/zsh): puts the tools installed by scripts/install-tools.sh on PATH.
#   . scripts/env.sh
# Tests also find the tools without it (they look under ./.tools/ and in these variables).
if [ -n "${BASH_SOURCE[0]:-}" ]; then
    _wsingress_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
else
    _wsingress_root=$(cd "$(dirname "$0")/.." && pwd)
fi
export WSINGRESS_TOOLS="$_wsingress_root/.tools"
case ":$PATH:" in
*":$WSINGRESS_TOOLS/bin:"*) ;;
*) export PATH="$WSINGRESS_TOOLS/bin:$WSINGRESS_TOOLS/node/node_modules/.bin:$PATH" ;;
esac
export NODE_PATH="$WSINGRESS_TOOLS/node/node_modules${NODE_PATH:+:$NODE_PATH}"
export HELM_CACHE_HOME="$WSINGRESS_TOOLS/helm/cache"
export HELM_CONFIG_HOME="$WSINGRESS_TOOLS/helm/config"
export HELM_DATA_HOME="$WSINGRESS_TOOLS/helm/data"
export K6_NO_USAGE_REPORT=true
# Explicit paths for tests (each is used only if the file exists).
export WSINGRESS_HELM="$WSINGRESS_TOOLS/bin/helm"
export WSINGRESS_KUBERNETES_VALIDATE="$WSINGRESS_TOOLS/bin/kubernetes-validate"
export WSINGRESS_WEBSOCAT="$WSINGRESS_TOOLS/bin/websocat"
export WSINGRESS_K6="$WSINGRESS_TOOLS/bin/k6"
unset _wsingress_root
