#!/usr/bin/env bash
# Make sure a Java runtime >= 17 is on PATH (the Spark engine of `rnnops forecast` needs one).
# Does nothing when `java -version` already reports 17 or later; otherwise installs Debian's or
# Ubuntu's headless OpenJDK 17 with apt-get (as root, or through sudo). Used by .ci/run.
set -euo pipefail

java_major() {
  # "openjdk version "17.0.15" 2025-04-15" -> 17 ; "1.8.0_392" -> 8
  local v
  v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
  v=${v#1.}
  echo "${v%%.*}"
}

if command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 17 ] 2>/dev/null; then
  echo "java $(java_major) found: $(command -v java)"
  exit 0
fi

source "$(dirname "$0")/apt_install.sh"
apt_install "a Java 17+ runtime, for pyspark" openjdk-17-jre-headless
java -version 2>&1 | head -1
