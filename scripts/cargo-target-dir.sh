#!/usr/bin/env bash
# Prints the absolute path of cargo's target directory for this workspace, as cargo itself
# resolves it: CARGO_TARGET_DIR, a `build.target-dir` in some .cargo/config.toml, or ./target.
# Scripts that run a binary cargo built find it under this directory, never under a hard-coded
# target/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null || cargo metadata --format-version 1 --no-deps)"
dir="$(printf '%s' "$dir" | grep -o '"target_directory":"[^"]*"' | head -n 1 | cut -d'"' -f4)"
if [[ -z "$dir" ]]; then
    echo "cargo-target-dir: cargo metadata did not name a target directory" >&2
    exit 1
fi
printf '%s\n' "$dir"
