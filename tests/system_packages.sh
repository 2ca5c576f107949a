#!/usr/bin/env bash
# The Debian programs the test suite drives besides Python: age, zstd and tar (the backup format
# is checked with the standard tools), pg_dump (what a dump of the database shows), chromium (the
# console in a real browser). Run by `make test` and `.ci/run`: as root, what is missing is
# installed with apt-get; otherwise it is named and the run stops before the suite starts.
set -euo pipefail

missing=()
command -v age >/dev/null || missing+=(age)
command -v zstd >/dev/null || missing+=(zstd)
command -v tar >/dev/null || missing+=(tar)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
command -v pg_isready >/dev/null || missing+=(postgresql-client)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ]; then
  echo "tests: missing Debian packages: ${packages}(as root: apt-get install ${packages% })" >&2
  exit 1
fi
echo "tests: installing ${packages% } with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # one word per package
apt-get install -y -qq --no-install-recommends $packages
