#!/usr/bin/env bash
# Install Debian's Chromium and its matching WebDriver (the `chromium-driver` package is always
# the browser's own version) for the browser tests of the playground (tests/test_playground.py).
# Idempotent. Nothing is downloaded outside apt: Selenium is pointed at /usr/bin/chromedriver, so
# it never fetches a browser or a driver of its own.
#
#   bash scripts/install_chromium.sh       # as root (CI, containers) or with sudo
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null | head -n 1))"
    exit 0
fi
. "$(dirname "$0")/apt_install.sh"
apt_install "Chromium and its WebDriver (browser tests)" chromium chromium-driver
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]
