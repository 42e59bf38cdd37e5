# Sourced by the quick-start scripts and by .ci/run: the one install step. Installs the
# system packages homeostat's build and tests need (Debian/Ubuntu, as root, with apt-get),
# then the Rust toolchain when cargo is missing. Anywhere else it names what is missing
# and stops, instead of failing later inside a build script.
#
# What each package is for:
#   clang, llvm      compile the eBPF program (crates/homeostat-ebpf/build.rs)
#   libelf-dev, zlib1g-dev, pkg-config, make   libbpf-sys, built from its vendored source
#   gcc, libc6-dev   C compiler and headers for crates that build C, and for the tests'
#                    helper programs
#   strace           the trace fixtures and data/sample/record.sh
#   curl, ca-certificates   rustup, on a machine without Rust
#   python3          scripts/record-notes-sample.sh (http.server in front of the notes
#                    service; its CGI handler is Perl, from the Essential perl-base)
homeostat_packages=(clang llvm libelf-dev zlib1g-dev pkg-config make gcc libc6-dev strace curl ca-certificates python3)

homeostat_missing_packages() {
    local p
    for p in "${homeostat_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

homeostat_ensure_deps() {
    local missing
    if command -v dpkg-query >/dev/null 2>&1; then
        mapfile -t missing < <(homeostat_missing_packages)
        if [ ${#missing[@]} -gt 0 ]; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                echo "== installing system packages: ${missing[*]}"
                export DEBIAN_FRONTEND=noninteractive
                apt-get update -qq
                apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
            else
                echo "homeostat: error: missing system packages: ${missing[*]}" >&2
                echo "homeostat: install them with: sudo apt-get install ${missing[*]}" >&2
                echo "homeostat: (or run this script as root, and it installs them)" >&2
                return 1
            fi
        fi
    else
        # Not Debian: check the commands the build needs and name them.
        local c absent=()
        for c in clang pkg-config make cc; do
            command -v "$c" >/dev/null 2>&1 || absent+=("$c")
        done
        if [ ${#absent[@]} -gt 0 ]; then
            echo "homeostat: error: not a Debian/Ubuntu machine and these are missing: ${absent[*]}" >&2
            echo "homeostat: install clang, llvm, libelf (headers), zlib (headers), pkg-config and make" >&2
            return 1
        fi
    fi

    # shellcheck source=scripts/lib/ensure-rust.sh
    . "$(dirname "${BASH_SOURCE[0]}")/ensure-rust.sh"
}

homeostat_ensure_deps
