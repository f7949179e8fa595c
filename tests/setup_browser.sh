#!/bin/sh
# Best effort: make Debian's headless Chromium and its driver available for tests/test_report_browser.py.
# Exit 0 when /usr/bin/chromium and /usr/bin/chromedriver are there (installing them with apt-get as
# root if needed); non-zero otherwise, and the browser tests skip saying why.
set -u
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is not installed and this is not a root Debian shell (apt-get install -y chromium chromium-driver)" >&2
    exit 1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || {
    echo "apt-get install chromium chromium-driver failed" >&2
    exit 1
}
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]
