# .ci/lib.sh -- shell functions shared by .ci/run and the .ci/job-* scripts.
# Sourced, not run.

# Where things built from source (Tcl 9, the cross-built Tcl and OpenSSL)
# are kept between runs: outside the clone, so that a fresh clone on the
# same machine reuses them.  SMTP_CI_CACHE chooses another place.
CI_CACHE=${SMTP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smtp-ci}
mkdir -p "$CI_CACHE"

# ci_apt ARGS...
#	apt-get (or apt-cache, as ci_apt_cache) with a private configuration
#	kept in $CI_CACHE/apt: Debian's trixie (binary) and sid and bookworm
#	(source) archives, without touching the system's sources.  Used for
#	"source --download-only" and "download" only: nothing is installed
#	into the system from there.
ci_apt_setup() {
    local d=$CI_CACHE/apt
    if [ ! -f "$d/etc/sources.list" ]; then
        mkdir -p "$d/etc/sources.list.d" "$d/etc/preferences.d" \
                 "$d/lists/partial" "$d/cache/archives/partial"
        local k=/usr/share/keyrings/debian-archive-keyring.gpg
        cat > "$d/etc/sources.list" <<SRC
deb [signed-by=$k] http://deb.debian.org/debian trixie main
deb-src [signed-by=$k] http://deb.debian.org/debian sid main
deb-src [signed-by=$k] http://deb.debian.org/debian trixie main
deb-src [signed-by=$k] http://deb.debian.org/debian bookworm main
SRC
    fi
    CI_APT_OPTS=(-o "Dir::Etc::sourcelist=$d/etc/sources.list"
        -o "Dir::Etc::sourceparts=$d/etc/sources.list.d"
        -o "Dir::Etc::preferencesparts=$d/etc/preferences.d"
        -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache"
        -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
    # Debug::NoLocking: apt's own locks are the system's; clones and jobs
    # sharing this cache take turns on $d/lock instead (flock).
    if [ ! -f "$d/updated" ]; then
        flock "$d/lock" sh -c '[ -f "$0/updated" ] || {
            apt-get "$@" update >/dev/null && touch "$0/updated"; }' \
            "$d" "${CI_APT_OPTS[@]}"
    fi
}
ci_apt() { ci_apt_setup; flock "$CI_CACHE/apt/lock" apt-get "${CI_APT_OPTS[@]}" "$@"; }
ci_apt_cache() { ci_apt_setup; flock "$CI_CACHE/apt/lock" apt-cache "${CI_APT_OPTS[@]}" "$@"; }

# ci_counts FILE
#	Prints "PASSED FAILED SKIPPED" from the last closing line
#	("N passed, N failed, N skipped", a word and a colon may precede it)
#	in FILE, or nothing when there is none.
ci_counts() {
    sed -n -E 's/^([A-Za-z0-9_.-]+: *)?([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?[[:space:]]*$/\2 \3 \5/p' \
        "$1" | tail -n 1 | awk '{print $1, $2, ($3 == "" ? 0 : $3)}'
}
