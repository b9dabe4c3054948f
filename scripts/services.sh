#!/usr/bin/env bash
# Make sure Redis and MariaDB are up on 127.0.0.1 (install them from Debian packages when absent).
# Idempotent: services that already answer are left alone.
set -euo pipefail

log() { echo "[services] $*"; }
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

apt_install() {
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq "$@" >/dev/null
}

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && { command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || true; }; }
mariadb_up() { mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; }

# --- Redis
if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  log "starting redis-server"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.2; done
redis-cli -h 127.0.0.1 ping >/dev/null || { log "redis did not start"; exit 1; }
log "redis up"

# --- MariaDB
if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then apt_install mariadb-server mariadb-client; fi
if ! mariadb_up; then
  log "starting mariadb"
  $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
  if [ ! -d /var/lib/mysql/mysql ]; then $SUDO mariadb-install-db --user=mysql >/dev/null 2>&1 || true; fi
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql \
    --bind-address=127.0.0.1 --port=3306
fi
for _ in $(seq 1 100); do mariadb_up && break; sleep 0.3; done
mariadb_up || { log "mariadb did not start"; exit 1; }
# root over TCP with an empty password, as the tests expect (a fresh Debian install uses unix_socket auth).
if ! mysql -h 127.0.0.1 -uroot -e "SELECT 1" >/dev/null 2>&1; then
  $SUDO mysql -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); \
    CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
fi
mysql -h 127.0.0.1 -uroot -e "SELECT 1" >/dev/null
log "mariadb up"

# --- Chromium and its driver (tests/console/test_browser.py drives Debian's chromium; never a downloaded browser)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then apt_install chromium chromium-driver; fi
command -v chromium >/dev/null && command -v chromedriver >/dev/null || { log "chromium did not install"; exit 1; }
log "chromium up ($(chromium --version 2>/dev/null | head -n1))"
