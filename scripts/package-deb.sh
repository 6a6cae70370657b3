#!/usr/bin/env bash
# Builds the Debian package of ferrocore (release, with cargo-deb) into TARGET_DIR/debian/, where
# TARGET_DIR is cargo's target directory (scripts/cargo-target-dir.sh; CARGO_TARGET_DIR is honoured).
#
#   scripts/package-deb.sh                  build the .deb, print its path
#   scripts/package-deb.sh --install-test   then, as root on Debian: install it with dpkg -i, run
#                                           the unit's ExecStart as the ferrocore user the way
#                                           systemd would, check /healthz and the admin API, stop
#                                           it with SIGTERM, reinstall over itself, dpkg -r,
#                                           dpkg --purge; PASS or FAIL.
#
# The install test needs no running systemd: it reads User=, WorkingDirectory=, Environment=,
# EnvironmentFile=, LimitNOFILE=, UMask= and ExecStart= from the installed unit and runs the
# command with `runuser -u ferrocore --`. It listens on free loopback ports, written into
# /etc/ferrocore/ferrocore.env, and leaves the machine as it found it (package purged, data
# directory gone, the ferrocore user removed if the test created it). It refuses to run when
# ferrocore is already installed or /var/lib/ferrocore exists.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

install_test=false
for arg in "$@"; do
    case "$arg" in
        --install-test) install_test=true ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *)
            echo "package-deb: unknown argument: $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package-deb: cargo-deb is missing; install it with: cargo install cargo-deb --locked" >&2
    exit 1
fi

target_dir="$(scripts/cargo-target-dir.sh)"

# --- Build ------------------------------------------------------------------------------------
echo "== cargo build --release -p ferrocore (target: $target_dir)"
cargo build --release --locked -p ferrocore
man_dir="$target_dir/release/man"
rm -rf "$man_dir"
"$target_dir/release/ferrocore" manpages "$man_dir"
gzip -9 -n -f "$man_dir"/*.1
# --strip: the release profile keeps line tables (debug = "line-tables-only"), 180 MB of them.
echo "== cargo deb -p ferrocore --no-build --strip"
deb="$(cargo deb -p ferrocore --no-build --strip | tail -n 1)"
if [[ ! -f "$deb" ]]; then
    echo "package-deb: cargo deb did not print the package's path (got: $deb)" >&2
    exit 1
fi
echo "package: $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb" | awk '{print $1, $2, $6}' | grep -v -e '/$' -e '/man1/' || true
echo "and $(dpkg-deb --contents "$deb" | grep -c '/man1/.*\.1\.gz$') man pages in ./usr/share/man/man1/"


$install_test || exit 0

# --- Install test -----------------------------------------------------------------------------
failures=0
pass() { echo "PASS: $*"; }
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
die() {
    echo "FAIL: $*"
    echo "RESULT: FAIL (install test aborted)"
    exit 1
}

[[ $EUID -eq 0 ]] || die "--install-test must run as root"
[[ -f /etc/debian_version ]] || die "--install-test needs Debian (no /etc/debian_version)"
if dpkg-query -W -f '${db:Status-Status}' ferrocore 2>/dev/null | grep -qv '^not-installed$'; then
    die "the ferrocore package is already on this machine; the test installs and purges its own"
fi
[[ ! -e /var/lib/ferrocore ]] || die "/var/lib/ferrocore exists; not touching someone's data"
user_existed=false
getent passwd ferrocore >/dev/null && user_existed=true

log="$(mktemp /tmp/ferrocore-install-test.XXXXXX.log)"
runuser_pid=""
cleanup() {
    if [[ -n "$runuser_pid" ]] && kill -0 "$runuser_pid" 2>/dev/null; then
        pkill -TERM -P "$runuser_pid" 2>/dev/null || true
        sleep 2
        kill -KILL "$runuser_pid" 2>/dev/null || true
    fi
    if dpkg-query -W -f '${db:Status-Status}' ferrocore 2>/dev/null | grep -qv '^not-installed$'; then
        dpkg --purge ferrocore >/dev/null 2>&1 || true
    fi
    if ! $user_existed && getent passwd ferrocore >/dev/null; then
        deluser --quiet --system ferrocore >/dev/null 2>&1 || true
        getent group ferrocore >/dev/null && delgroup --quiet --system ferrocore >/dev/null 2>&1 || true
    fi
    rm -f "$log"
}
trap cleanup EXIT

echo "== dpkg -i $deb"
dpkg -i "$deb" || die "dpkg -i failed"
pass "dpkg -i installed $(dpkg-query -W -f '${Package} ${Version}' ferrocore)"

[[ -x /usr/bin/ferrocore ]] && pass "/usr/bin/ferrocore: $(/usr/bin/ferrocore --version)" || fail "/usr/bin/ferrocore missing"
unit="$(dpkg -L ferrocore | grep '/systemd/system/ferrocore\.service$' | head -n 1)"
[[ -n "$unit" && -f "$unit" ]] && pass "unit installed at $unit" || die "no ferrocore.service in the package"
if [[ -e /etc/systemd/system/multi-user.target.wants/ferrocore.service ]]; then
    fail "the unit was enabled on installation"
else
    pass "the unit is installed but not enabled"
fi
if command -v systemd-analyze >/dev/null; then
    if out="$(systemd-analyze verify "$unit" 2>&1)"; then
        pass "systemd-analyze verify $unit${out:+ (output: $out)}"
    else
        fail "systemd-analyze verify $unit: $out"
    fi
fi
if [[ "$(getent passwd ferrocore | cut -d: -f6,7)" == "/var/lib/ferrocore:/usr/sbin/nologin" ]]; then
    pass "system user: $(getent passwd ferrocore)"
else
    fail "ferrocore user: '$(getent passwd ferrocore)'"
fi
[[ "$(stat -c '%U:%G %a' /var/lib/ferrocore)" == "ferrocore:ferrocore 700" ]] \
    && pass "/var/lib/ferrocore is ferrocore:ferrocore 0700" \
    || fail "/var/lib/ferrocore is $(stat -c '%U:%G %a' /var/lib/ferrocore)"
dpkg-query -W -f '${Conffiles}' ferrocore | grep -q '/etc/ferrocore/ferrocore.env' \
    && pass "/etc/ferrocore/ferrocore.env is a conffile ($(stat -c '%U:%G %a' /etc/ferrocore/ferrocore.env))" \
    || fail "/etc/ferrocore/ferrocore.env is not a conffile"
man_page="$(dpkg -L ferrocore | grep '/man1/ferrocore-serve\.1\.gz$' || true)"
[[ -n "$man_page" ]] && zcat "$man_page" | grep -q 'data\\-dir' \
    && pass "man page $man_page ($(dpkg -L ferrocore | grep -c '/man1/.*\.1\.gz$') pages)" \
    || fail "no ferrocore-serve(1) man page"

# Free loopback ports for this run, in the env file the unit reads (as an operator would).
read -r http_port grpc_port mqtts_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
cat >>/etc/ferrocore/ferrocore.env <<EOF

# Added by scripts/package-deb.sh --install-test.
FERROCORE_HTTP=127.0.0.1:$http_port
FERROCORE_GRPC=127.0.0.1:$grpc_port
FERROCORE_MQTTS=127.0.0.1:$mqtts_port
FERROCORE_ARGS=--shutdown-timeout-seconds 5
EOF
echo "ports: http=$http_port grpc=$grpc_port mqtts=$mqtts_port (in /etc/ferrocore/ferrocore.env)"

# The unit's settings, as systemd would apply them.
unit_value() { sed -n "s/^$1=//p" "$unit"; }
run_user="$(unit_value User)"
work_dir="$(unit_value WorkingDirectory)"
nofile="$(unit_value LimitNOFILE)"
umask_value="$(unit_value UMask)"
exec_start="$(unit_value ExecStart)"
declare -A env=()
env_order=()
set_env() {
    [[ -v "env[$1]" ]] || env_order+=("$1")
    env[$1]="$2"
}
while IFS= read -r assignment; do
    set_env "${assignment%%=*}" "${assignment#*=}"
done < <(unit_value Environment)
while IFS= read -r file; do
    optional=false
    [[ "$file" == -* ]] && optional=true && file="${file#-}"
    if [[ ! -f "$file" ]]; then
        $optional || die "EnvironmentFile $file is missing"
        continue
    fi
    # systemd's syntax for these files, as far as ferrocore.env uses it: VAR=value lines, comments.
    while IFS= read -r line; do
        [[ "$line" =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        name="${BASH_REMATCH[1]}"
        value="${BASH_REMATCH[2]}"
        [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]] && value="${BASH_REMATCH[1]}"
        set_env "$name" "$value"
    done <"$file"
done < <(unit_value EnvironmentFile)
# ExecStart: $VAR is split at whitespace (nothing when unset), ${VAR} is one word.
argv=()
read -ra words <<<"$exec_start"
for word in "${words[@]}"; do
    if [[ "$word" =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
        name="${BASH_REMATCH[1]}"
        if [[ -v "env[$name]" ]]; then
            read -ra split <<<"${env[$name]}"
            argv+=("${split[@]}")
        fi
    elif [[ "$word" =~ ^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$ ]]; then
        argv+=("${env[${BASH_REMATCH[1]}]:-}")
    else
        argv+=("${word#-}")
    fi
done
env_args=()
for name in "${env_order[@]}"; do
    env_args+=("$name=${env[$name]}")
done
printf 'ExecStart as %s in %s: %s\n' "$run_user" "$work_dir" "${argv[*]}"
printf 'environment: %s\n' "$(printf '%s ' "${env_order[@]}")"

# LimitNOFILE= sets both limits. Raising the hard limit needs CAP_SYS_RESOURCE, which a container
# may lack: then the test runs at this shell's hard limit and says so.
hard_nofile="$(ulimit -Hn)"
if [[ -n "$nofile" && "$hard_nofile" != unlimited && "$nofile" -gt "$hard_nofile" ]] && ! (ulimit -n "$nofile") 2>/dev/null; then
    echo "note: LimitNOFILE=$nofile is above this shell's hard limit $hard_nofile, which cannot be raised here; running at $hard_nofile"
    nofile="$hard_nofile"
fi
(
    cd "$work_dir"
    [[ -n "$umask_value" ]] && umask "$umask_value"
    [[ -n "$nofile" ]] && ulimit -n "$nofile"
    exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin LANG=C.UTF-8 "${env_args[@]}" \
        runuser -u "$run_user" -- "${argv[@]}"
) >"$log" 2>&1 &
runuser_pid=$!

healthy=false
for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$http_port/healthz" 2>/dev/null; then
        healthy=true
        break
    fi
    kill -0 "$runuser_pid" 2>/dev/null || break
    sleep 0.2
done
server_pid="$(pgrep -P "$runuser_pid" || true)"
if $healthy; then
    pass "GET http://127.0.0.1:$http_port/healthz answers 200 (ferrocore pid $server_pid, user $(ps -o user= -p "$server_pid" 2>/dev/null))"
else
    fail "/healthz did not answer within 30 s; the server's log:"
    sed 's/^/    /' "$log"
fi

if $healthy; then
    [[ "$(stat -c '%U %a' /var/lib/ferrocore/admin-token 2>/dev/null)" == "ferrocore 600" ]] \
        && pass "admin token generated in /var/lib/ferrocore/admin-token (ferrocore, 0600)" \
        || fail "admin token: $(stat -c '%U %a' /var/lib/ferrocore/admin-token 2>&1)"
    registries="http://127.0.0.1:$http_port/v1/projects/install-test/locations/us-central1/registries"
    code="$(curl -s -o /dev/null -w '%{http_code}' "$registries")"
    [[ "$code" == 401 ]] && pass "the admin API without a token: 401" || fail "the admin API without a token: $code"
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat /var/lib/ferrocore/admin-token)" "$registries")"
    [[ "$code" == 200 ]] && pass "the admin API with the generated token: 200" || fail "the admin API with the token: $code"
    [[ "$(ps -o user= -p "$server_pid" 2>/dev/null)" == ferrocore ]] \
        && pass "the server runs as ferrocore" || fail "the server runs as '$(ps -o user= -p "$server_pid" 2>/dev/null)'"
    limit="$(awk '/Max open files/ {print $4}' "/proc/$server_pid/limits" 2>/dev/null)"
    [[ "$limit" == "$nofile" ]] && pass "open files limit $limit (LimitNOFILE)" || fail "open files limit '$limit', unit says $nofile"
    if grep -q $'\e\[' "$log"; then
        fail "the server's log has ANSI colour codes (the journal would keep them)"
    else
        pass "the server's log is plain text (no ANSI colour codes)"
    fi
    if grep -qF -- "$(cat /var/lib/ferrocore/admin-token)" "$log"; then
        fail "the admin token appears in the server's log"
    else
        pass "the admin token is not in the server's log"
    fi
fi

# Stop it as systemd would: SIGTERM, then wait (TimeoutStopSec).
if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    status=0
    for _ in $(seq 1 150); do
        kill -0 "$runuser_pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$runuser_pid" 2>/dev/null; then
        fail "the server did not exit within 30 s of SIGTERM"
    else
        wait "$runuser_pid" || status=$?
        runuser_pid=""
        [[ $status -eq 0 ]] && pass "SIGTERM: the server exited with status 0" || fail "SIGTERM: exit status $status"
    fi
fi
echo "--- the server's log (stderr and stdout):"
sed 's/^/    /' "$log"

# Upgrade path: installing the package over itself keeps the edited conffile and the data.
echo "== dpkg -i again (upgrade path)"
token_before="$(cat /var/lib/ferrocore/admin-token 2>/dev/null || true)"
dpkg -i "$deb" >/dev/null || fail "dpkg -i over the installed package failed"
grep -q "^FERROCORE_HTTP=127.0.0.1:$http_port$" /etc/ferrocore/ferrocore.env \
    && [[ -n "$token_before" && "$(cat /var/lib/ferrocore/admin-token)" == "$token_before" ]] \
    && pass "reinstall: the edited ferrocore.env and the data (admin token) kept" \
    || fail "reinstall lost the edited ferrocore.env or the data"

echo "== dpkg -r ferrocore"
dpkg -r ferrocore >/dev/null || fail "dpkg -r failed"
[[ ! -e /usr/bin/ferrocore && -f /var/lib/ferrocore/ferrocore.db && -f /etc/ferrocore/ferrocore.env ]] \
    && pass "dpkg -r: binary gone; data and the env file kept" \
    || fail "dpkg -r left: $(ls -d /usr/bin/ferrocore /var/lib/ferrocore/ferrocore.db /etc/ferrocore/ferrocore.env 2>&1 | tr '\n' ' ')"
echo "== dpkg --purge ferrocore"
dpkg --purge ferrocore >/dev/null || fail "dpkg --purge failed"
[[ ! -e /var/lib/ferrocore && ! -e /etc/ferrocore && ! -e "$unit" ]] \
    && pass "dpkg --purge: /var/lib/ferrocore, /etc/ferrocore and the unit gone" \
    || fail "dpkg --purge left: $(ls -d /var/lib/ferrocore /etc/ferrocore "$unit" 2>&1 | tr '\n' ' ')"
if ! $user_existed; then
    deluser --quiet --system ferrocore >/dev/null 2>&1 || true
    getent group ferrocore >/dev/null && delgroup --quiet --system ferrocore >/dev/null 2>&1 || true
    getent passwd ferrocore >/dev/null && fail "the ferrocore user is still there" \
        || pass "removed the ferrocore user the package created (Debian's purge keeps system users)"
fi

if [[ $failures -eq 0 ]]; then
    echo "RESULT: PASS"
else
    echo "RESULT: FAIL ($failures checks failed)"
    exit 1
fi
