#!/usr/bin/env bash
# The vendored engineioxide (vendor/engineioxide) is the crates.io release plus
# vendor/engineioxide.patch, and nothing else: extracts the release's .crate (from cargo's
# cache, or fetched by cargo into it), applies the patch and compares the trees byte for byte.
# Run by scripts/validate-deploy.sh (so by `make test`); exits non-zero on any difference.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME=engineioxide
VENDORED="$ROOT/vendor/$NAME"
PATCH="$ROOT/vendor/$NAME.patch"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$VENDORED/Cargo.toml" | head -n 1)"
# crates.io's checksum of the release (the `cksum` of its index entry, as in any Cargo.lock
# that depends on it unpatched). Update it together with the version.
SHA256=0615980857185ecc33fed6ec417ec64fe3e427bf1de0471bb3594132f453bdbe
EXPECTED_VERSION=0.17.9
# What the vendored copy leaves out of the release on purpose: its tests and benches (their
# [[test]]/[[bench]] entries are removed by the patch), and cargo's packaging files.
LEFT_OUT=(tests benches Cargo.toml.orig Cargo.lock .cargo_vcs_info.json)

[[ "$VERSION" == "$EXPECTED_VERSION" ]] || {
    echo "vendor/$NAME is version $VERSION; update EXPECTED_VERSION and SHA256 here" >&2
    exit 1
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
find_crate() { find "$CARGO_HOME/registry/cache" -name "$NAME-$VERSION.crate" 2>/dev/null | head -n 1; }
crate="$(find_crate || true)"
if [[ -z "$crate" ]]; then
    # [patch.crates-io] means cargo never downloads the release for this workspace: ask cargo
    # for it through a throwaway manifest, which puts the verified .crate into its cache.
    mkdir -p "$WORK/fetch/src"
    : >"$WORK/fetch/src/lib.rs"
    printf '[package]\nname = "fetch-release"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n%s = "=%s"\n' \
        "$NAME" "$VERSION" >"$WORK/fetch/Cargo.toml"
    cargo fetch --quiet --manifest-path "$WORK/fetch/Cargo.toml"
    crate="$(find_crate)"
fi
[[ -n "$crate" ]] || { echo "no $NAME-$VERSION.crate in $CARGO_HOME/registry/cache" >&2; exit 1; }
echo "$SHA256  $crate" | sha256sum --check --quiet -

tar -xzf "$crate" -C "$WORK"
release="$WORK/$NAME-$VERSION"
for item in "${LEFT_OUT[@]}"; do
    rm -rf "${release:?}/$item"
done
patch --quiet --batch --forward -p1 -d "$release" <"$PATCH"
if ! diff -r "$release" "$VENDORED"; then
    echo "vendor/$NAME differs from the $VERSION release plus vendor/$NAME.patch (diff above)" >&2
    exit 1
fi
echo "vendor/$NAME is $NAME $VERSION from crates.io plus vendor/$NAME.patch, and nothing else"
