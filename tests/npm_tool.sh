# Sourced by tests/conformance/run.sh and tests/inspector/run.sh (from the
# repository root): the sovryn binary under test, and a pinned npm package
# installed beside Node.js 22 (npm's `node` package) into its own prefix, so
# the system Node.js only has to run npm.

# Sets SOVRYN_BIN to an absolute path (builds target/debug/sovryn when unset).
sovryn_bin() {
    if [ -z "${SOVRYN_BIN:-}" ]; then
        cargo build --quiet -p sovryn-cli
        SOVRYN_BIN=$PWD/target/debug/sovryn
    fi
    case "$SOVRYN_BIN" in /*) ;; *) SOVRYN_BIN=$PWD/$SOVRYN_BIN ;; esac
}

# npm_tool PREFIX PACKAGE VERSION: installs node@22 and PACKAGE@VERSION into
# PREFIX unless that version is already there; sets NODE to its node binary.
npm_tool() {
    local prefix=$1 package=$2 version=$3
    if [ ! -x "$prefix/node_modules/.bin/node" ] \
        || ! grep -q "\"version\": \"$version\"" "$prefix/node_modules/$package/package.json" 2>/dev/null; then
        mkdir -p "$prefix"
        npm install --silent --no-audit --no-fund --prefix "$prefix" \
            "node@22.23.3" "$package@$version" >/dev/null
    fi
    NODE=$prefix/node_modules/.bin/node
}
