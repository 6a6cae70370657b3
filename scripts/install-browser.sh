#!/usr/bin/env bash
# Installs what the web console's browser tests (tests/compat/test_console.py) drive: Debian's
# Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver). Nothing is downloaded
# from outside Debian's archive. Does nothing when both are there.
#
# Needs root (or sudo) for apt-get. Outside CI a machine where that is not possible only warns:
# the console tests then skip. Under CI=true it fails, as those tests would.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
as_root=()
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        msg="chromium and chromedriver are missing and apt-get needs root; the console tests will skip"
        if [[ "${CI:-}" == "true" ]]; then
            echo "error: $msg" >&2
            exit 1
        fi
        echo "warning: $msg" >&2
        exit 0
    fi
fi
echo "install-browser: installing Debian's chromium and chromium-driver" >&2
"${as_root[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver
