#!/usr/bin/env bash
# One version source: Cargo.toml's `version`. Every other place that repeats it follows:
#   - Cargo.lock (the wsingress package entry);
#   - charts/wsingress/Chart.yaml `version` and `appVersion` (one version for chart and app);
#   - every `.../wsingress:X.Y.Z` image reference and every `charts/wsingress --version X.Y.Z`
#     in tracked files (manifests, chart annotations, docs, READMEs, the kind suite);
#   - the Dockerfile's `ARG VERSION=` default and tests/e2e/values-kind.yaml's image tag.
#
#   scripts/version.sh check              # exit 1, naming each place that differs (.ci/run)
#   scripts/version.sh check --tag v1.2.3 # also: the release tag is v<version> (release.yml)
#   scripts/version.sh bump 1.2.3         # rewrite every place, then check
#   scripts/version.sh get                # print the version
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SEMVER='[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?'
# What precedes a copy of the version: an image path ending in /wsingress, or the chart's name
# before a --version flag.
REF='(/wsingress:|charts/wsingress --version )'

die() {
    printf 'version: %s\n' "$*" >&2
    exit 1
}

cargo_version() {
    sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1
}

# Tracked text files that name the image or the chart with a version (this script excluded).
image_files() {
    git ls-files -z | xargs -0 grep -l -E "$REF$SEMVER" -- 2>/dev/null |
        grep -v -x 'scripts/version.sh' || true
}

# Print "FILE: found X" for every place that does not say $1.
mismatches() {
    local want=$1 found file
    found=$(awk '/^\[\[package\]\]/ {p=0} /^name = "wsingress"$/ {p=1} p && /^version = / {gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
    [ "$found" = "$want" ] || echo "Cargo.lock: wsingress package at '$found'"
    found=$(sed -n 's/^version: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/wsingress/Chart.yaml)
    [ "$found" = "$want" ] || echo "charts/wsingress/Chart.yaml: version '$found'"
    found=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/wsingress/Chart.yaml)
    [ "$found" = "$want" ] || echo "charts/wsingress/Chart.yaml: appVersion '$found'"
    found=$(sed -n 's/^ARG VERSION=//p' Dockerfile)
    [ "$found" = "$want" ] || echo "Dockerfile: ARG VERSION=$found"
    found=$(sed -n 's/^  tag: "\(.*\)"$/\1/p' tests/e2e/values-kind.yaml)
    [ "$found" = "$want" ] || echo "tests/e2e/values-kind.yaml: image tag '$found'"
    while IFS= read -r file; do
        [ -n "$file" ] || continue
        grep -n -o -E "$REF$SEMVER" "$file" |
            awk -v want="$want" -v file="$file" \
                '{v = $0; sub(/.*(:| )/, "", v); if (v != want) print file ":" $0}' || true
    done < <(image_files)
}

check() {
    local tag=${1:-} version problems
    version=$(cargo_version)
    [[ "$version" =~ ^$SEMVER$ ]] || die "Cargo.toml version '$version' is not semver"
    if [ -n "$tag" ] && [ "$tag" != "v$version" ]; then
        die "tag '$tag' does not match Cargo.toml's version $version (want v$version)"
    fi
    problems=$(mismatches "$version")
    if [ -n "$problems" ]; then
        printf '%s\n' "$problems" | sed 's/^/  /' >&2
        die "these places differ from Cargo.toml's version $version; run: scripts/version.sh bump $version"
    fi
    echo "version $version: Cargo.toml, Cargo.lock, Chart.yaml, Dockerfile and $(image_files | wc -l) files naming the image or chart agree"
}

bump() {
    local new=$1 old file
    [[ "$new" =~ ^$SEMVER$ ]] || die "'$new' is not a version (X.Y.Z or X.Y.Z-pre)"
    old=$(cargo_version)
    sed -i "/^\[package\]/,/^\[/ s/^version = \".*\"$/version = \"$new\"/" Cargo.toml
    awk -v new="$new" '
        /^\[\[package\]\]/ {p=0}
        /^name = "wsingress"$/ {p=1}
        p && /^version = / {$0 = "version = \"" new "\""; p=0}
        {print}' Cargo.lock >Cargo.lock.tmp && mv Cargo.lock.tmp Cargo.lock
    sed -i -E "s/^version: .*/version: $new/; s/^appVersion: .*/appVersion: \"$new\"/" charts/wsingress/Chart.yaml
    sed -i -E "s/^ARG VERSION=.*/ARG VERSION=$new/" Dockerfile
    sed -i -E "s/^  tag: \".*\"$/  tag: \"$new\"/" tests/e2e/values-kind.yaml
    while IFS= read -r file; do
        [ -n "$file" ] || continue
        sed -i -E "s#$REF$SEMVER#\\1$new#g" "$file"
    done < <(image_files)
    echo "version: $old -> $new"
    check
}

case "${1:-}" in
check)
    if [ "${2:-}" = "--tag" ]; then
        [ -n "${3:-}" ] || die "check --tag needs a tag"
        check "$3"
    else
        check
    fi
    ;;
bump)
    [ -n "${2:-}" ] || die "usage: scripts/version.sh bump X.Y.Z"
    bump "$2"
    ;;
get) cargo_version ;;
*) die "usage: scripts/version.sh check [--tag vX.Y.Z] | bump X.Y.Z | get" ;;
esac
