# Before the files go, on removal (not upgrade): stop the service. Snapshots stay live in the
# kernel; say where their data is.
if [ -d /run/systemd/system ]; then systemctl stop coriolis-snapshot-agent.service || true; fi
if [ -n "$(ls -A /var/lib/coriolis-snapshots 2>/dev/null)" ]; then
  echo "coriolis-snapshot-agent: /var/lib/coriolis-snapshots holds snapstore files. A snapshot still live" >&2
  echo "  in the kernel writes into them until it is deleted or the machine reboots: they are kept." >&2
fi
