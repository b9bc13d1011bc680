#!/usr/bin/env bash
# Install what the browser test (tests/viewer) needs, idempotently (run by `make setup`):
#   - playwright-core from npm, exactly as package-lock.json pins it (npm ci checks the integrity);
#   - the prebuilt OHIF viewer, the dist/ folder of the npm package @ohif/app at OHIF_VERSION,
#     whose tarball must match OHIF_INTEGRITY. The tarball is kept in a cache outside the
#     repository (KNEENODE_CACHE, default ~/.cache/kneenode) so a fresh checkout does not fetch it
#     again; the unpacked, pruned copy lives in tests/viewer/.ohif/<version>/ (git-ignored).
# Debian's chromium is installed by the Makefile's DEB_PACKAGES.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OHIF_VERSION=3.13.2
OHIF_INTEGRITY=sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
cache=${KNEENODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kneenode}
dest=$here/.ohif/$OHIF_VERSION
tgz=$cache/ohif-app-$OHIF_VERSION.tgz
npm_flags=(--no-audit --no-fund --loglevel=error)

major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
  echo "viewer: node >= 20 with npm is needed for the browser test (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

integrity() {  # the npm (SRI) integrity string of a file
  node -e 'const c=require("crypto"),fs=require("fs");
    process.stdout.write("sha512-"+c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "$1"
}

# 1. playwright-core (reinstalled when the lock file changes)
stamp=$here/node_modules/.kneenode-installed
if [ ! -f "$stamp" ] || [ "$here/package-lock.json" -nt "$stamp" ]; then
  echo "viewer: npm ci (playwright-core)"
  (cd "$here" && npm ci "${npm_flags[@]}")
  touch "$stamp"
fi

# 2. OHIF: fetch (once), verify, unpack dist/, prune what the test never loads
if [ "$(cat "$dest/.integrity" 2>/dev/null)" != "$OHIF_INTEGRITY" ]; then
  mkdir -p "$cache"
  if [ ! -f "$tgz" ] || [ "$(integrity "$tgz")" != "$OHIF_INTEGRITY" ]; then
    echo "viewer: npm pack @ohif/app@$OHIF_VERSION"
    rm -f "$tgz"
    (cd "$cache" && npm pack "@ohif/app@$OHIF_VERSION" "${npm_flags[@]}" >/dev/null)
  fi
  got=$(integrity "$tgz")
  if [ "$got" != "$OHIF_INTEGRITY" ]; then
    echo "viewer: $tgz has integrity $got, expected $OHIF_INTEGRITY" >&2
    rm -f "$tgz"
    exit 1
  fi
  tmp=$(mktemp -d "$here/.ohif-unpack.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  tar -xzf "$tgz" -C "$tmp" package/dist package/LICENSE
  # Not used by the test's modes: the ONNX runtime (AI tools, 136 MB), the slide-microscopy
  # viewer (20 MB) and source maps.
  rm -rf "$tmp/package/dist/ort" "$tmp/package/dist/dicom-microscopy-viewer"
  find "$tmp/package/dist" -name '*.map' -delete
  cp "$tmp/package/LICENSE" "$tmp/package/dist/LICENSE.ohif"
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  mv "$tmp/package/dist" "$dest"
  echo "$OHIF_INTEGRITY" > "$dest/.integrity"
  echo "viewer: OHIF $OHIF_VERSION in $dest ($(du -sh "$dest" | cut -f1))"
fi
