# Shared by tests/real-waldur/setup and serve: where the Waldur MasterMind tarball and
# the cache built from it are. Sourced, not run.

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# The source tarball: $WALDUR_MASTERMIND_TARBALL, else shared/ beside the repository
# (as CI lays it), else /work/shared.
find_tarball() {
    if [ -n "${WALDUR_MASTERMIND_TARBALL:-}" ]; then
        echo "$WALDUR_MASTERMIND_TARBALL"
        return
    fi
    local dir candidate
    for dir in "$repo/../shared/waldur-mastermind" /work/shared/waldur-mastermind; do
        for candidate in "$dir"/waldur-mastermind-*.tar.gz; do
            if [ -f "$candidate" ]; then
                echo "$candidate"
                return
            fi
        done
    done
    echo "real-waldur: no waldur-mastermind-*.tar.gz found (set WALDUR_MASTERMIND_TARBALL)" >&2
    return 1
}

tarball="$(find_tarball)"
# The digest is read once per tarball path and size and kept beside the cache, so that
# `serve` does not hash 100 MB at every start.
cache_root="${USAGE_AGENT_CACHE:-/var/cache/usage-agent}/real-waldur"
digest_of() {
    local key index
    key="$(stat -c '%n %s %Y' "$(readlink -f "$1")")"
    index="$cache_root/digests"
    if [ -f "$index" ] && grep -qF "$key	" "$index"; then
        grep -F "$key	" "$index" | tail -n 1 | cut -f 2
        return
    fi
    local sum
    sum="$(sha256sum "$1" | cut -d ' ' -f 1)"
    mkdir -p "$cache_root"
    printf '%s\t%s\n' "$key" "$sum" >>"$index"
    echo "$sum"
}
digest="$(digest_of "$tarball")"
cache="$cache_root/${digest:0:16}"
venv="$cache/venv"
src="$cache/src"
pgdata="$cache/pgdata"
marker="$cache/complete"

# The PostgreSQL binaries (initdb, postgres, pg_ctl) of the newest installed major.
pg_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$dir" ] && echo "$dir"
}

# Who runs PostgreSQL: the postgres OS user when we are root (it refuses to run as
# root), else ourselves.
pg_user() {
    if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

# Runs a command as the PostgreSQL user.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# The environment Waldur runs in: our settings module, UTF-8 (Waldur refuses otherwise).
waldur_env() {
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
    export DJANGO_SETTINGS_MODULE=waldur_test_settings
    export LC_ALL=C.UTF-8 LANG=C.UTF-8
}
