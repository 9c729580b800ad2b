# Sourced by the scripts/ that install a system package: `apt_install WHAT PACKAGE...` installs
# Debian/Ubuntu packages with apt-get, as root or through sudo, or fails saying what to install
# by hand (WHAT: a few words for the message) when there is no apt-get.
apt_install() {
  local what="$1"
  shift
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no apt-get here; install $what ($*) yourself and put it on PATH" >&2
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  echo "installing $* ($what)..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
