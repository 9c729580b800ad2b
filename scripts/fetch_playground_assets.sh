#!/usr/bin/env bash
# Fetch the playground's vendored plotting library again from the npm registry: uPlot, pinned,
# checked against the registry's sha512 integrity, unpacked into
# serving/http/static/playground/vendor/uplot/ with its LICENSE and version. The files are
# committed (the page never loads anything from a CDN, and an install runs no build step): run
# this only to re-check them or to move the pin (change UPLOT_VERSION and UPLOT_INTEGRITY together,
# from `npm view uplot@X dist.integrity`).
#
#   bash scripts/fetch_playground_assets.sh
set -euo pipefail
UPLOT_VERSION="1.6.32"
UPLOT_INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/serving/http/static/playground/vendor/uplot"
command -v npm >/dev/null || { echo "error: npm is needed (Debian: apt-get install npm)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null)
tarball="$tmp/uplot-$UPLOT_VERSION.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$got" != "$UPLOT_INTEGRITY" ]; then
    echo "error: uplot-$UPLOT_VERSION.tgz has integrity $got, expected $UPLOT_INTEGRITY" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$tmp"
mkdir -p "$dest"
cp "$tmp/package/dist/uPlot.esm.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$dest/"
printf 'uplot %s (npm, MIT)\n%s\n' "$UPLOT_VERSION" "$UPLOT_INTEGRITY" > "$dest/VERSION"
echo "uplot $UPLOT_VERSION -> ${dest#"$root"/}: $(cd "$dest" && ls | tr '\n' ' ')"
