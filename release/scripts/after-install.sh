# After the files are in place, on install ($1 = install) and upgrade ($1 = upgrade): the
# service's user and its snapstore folder. The service stays disabled: the operator writes
# /etc/coriolis-snapshot-agent/config.toml first (the unit does not start without it).
USER=coriolis
STATE=/var/lib/coriolis-snapshot-agent

if ! getent passwd "$USER" >/dev/null; then
  useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin --user-group "$USER"
  # Removal deletes the user only if the package made it.
  mkdir -p "$STATE"
  touch "$STATE/created-user"
fi
# The snapshot modules' devices belong to the disk group (the udev rule).
usermod --append --groups disk "$USER"
# The sample config's snapstore destination and the unit's ReadWritePaths=.
install -d -o "$USER" -g "$USER" -m 0750 /var/lib/coriolis-snapshots
install -d -m 0755 /etc/coriolis-snapshot-agent
if [ -d /run/udev ]; then
  udevadm control --reload-rules || true
  # A module loaded before the package: its devices get the rule's group now, not at the next boot.
  udevadm trigger --sysname-match='veeam*' || true
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  # The running agent, if any, restarts on the new code; live snapshots survive a restart.
  if [ "$1" = upgrade ]; then systemctl try-restart coriolis-snapshot-agent.service || true; fi
fi
if [ ! -e /etc/coriolis-snapshot-agent/config.toml ]; then
  cat <<'MSG'
coriolis-snapshot-agent is installed and not enabled. To run it (README, "Install"):
  coriolis-snapshot-agent gen-certs --out /etc/coriolis-snapshot-agent/certs --hosts HOSTNAME,IP --group coriolis
  cp /etc/coriolis-snapshot-agent/config.toml.sample /etc/coriolis-snapshot-agent/config.toml   (then edit it)
  coriolis-snapshot-agent check-config --as-user coriolis --config /etc/coriolis-snapshot-agent/config.toml
  systemctl enable --now coriolis-snapshot-agent
MSG
fi
