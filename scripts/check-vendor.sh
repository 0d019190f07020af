#!/usr/bin/env bash
# Each patched dependency in vendor/ (engineioxide, socketioxide) is its crates.io release plus
# vendor/<name>.patch, and nothing else: extracts the release's .crate (from cargo's cache, or
# fetched by cargo into it), applies the patch and compares the trees byte for byte.
# Run by scripts/validate-deploy.sh (so by `make test`); exits non-zero on any difference.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# name, version, crates.io's checksum of the release (the checksum any Cargo.lock that depends
# on it unpatched records). Update them together with the vendored sources.
RELEASES=(
    "engineioxide 0.17.9 0615980857185ecc33fed6ec417ec64fe3e427bf1de0471bb3594132f453bdbe"
    "socketioxide 0.18.9 ef8a9378fdea634a338e8dd2cf17e81cfaaf8c04840625e4c78555c89d9ba6e9"
)
# What the vendored copies leave out of a release on purpose: its tests and benches (their
# [[test]]/[[bench]] entries are removed by the patch), and cargo's packaging files.
LEFT_OUT=(tests benches Cargo.toml.orig Cargo.lock .cargo_vcs_info.json)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
find_crate() { find "$CARGO_HOME/registry/cache" -name "$1-$2.crate" 2>/dev/null | head -n 1; }

failed=0
for release in "${RELEASES[@]}"; do
    read -r name version sha256 <<<"$release"
    vendored="$ROOT/vendor/$name"
    found="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$vendored/Cargo.toml" | head -n 1)"
    if [[ "$found" != "$version" ]]; then
        echo "vendor/$name is version $found; update RELEASES in $0" >&2
        failed=1
        continue
    fi
    crate="$(find_crate "$name" "$version" || true)"
    if [[ -z "$crate" ]]; then
        # [patch.crates-io] means cargo never downloads the release for this workspace: ask
        # cargo for it through a throwaway manifest, which puts the verified .crate in its cache.
        fetch="$WORK/fetch-$name"
        mkdir -p "$fetch/src"
        : >"$fetch/src/lib.rs"
        printf '[package]\nname = "fetch-release"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n%s = "=%s"\n' \
            "$name" "$version" >"$fetch/Cargo.toml"
        cargo fetch --quiet --manifest-path "$fetch/Cargo.toml"
        crate="$(find_crate "$name" "$version")"
    fi
    [[ -n "$crate" ]] || { echo "no $name-$version.crate in $CARGO_HOME/registry/cache" >&2; exit 1; }
    echo "$sha256  $crate" | sha256sum --check --quiet -

    mkdir -p "$WORK/$name"
    tar -xzf "$crate" -C "$WORK/$name"
    tree="$WORK/$name/$name-$version"
    for item in "${LEFT_OUT[@]}"; do
        rm -rf "${tree:?}/$item"
    done
    patch --quiet --batch --forward -p1 -d "$tree" <"$ROOT/vendor/$name.patch"
    if diff -r "$tree" "$vendored"; then
        echo "vendor/$name is $name $version from crates.io plus vendor/$name.patch, and nothing else"
    else
        echo "vendor/$name differs from the $version release plus vendor/$name.patch (diff above)" >&2
        failed=1
    fi
done
exit "$failed"
