# Shared by the project's scripts: run as root, install what is missing, find cargo.

require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: run as root: the tests and the demo create network namespaces" >&2
        exit 1
    fi
}

# Debian packages the build and the tests need. apt-get runs only when something is missing.
install_deps() {
    local missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    command -v git >/dev/null || missing+=(git)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Debian bookworm's rustc (1.63) is too old for the dependencies; a rustup toolchain is needed.
    if ! command -v cargo >/dev/null; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        echo "$0: no cargo found: install a Rust toolchain >= 1.85 (rustup) and run again" >&2
        exit 1
    fi
}
