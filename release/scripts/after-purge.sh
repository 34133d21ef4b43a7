# After the files went, on purge (an rpm's erase): remove what the package and its service made.
# Kept, and named: snapstore files (a live snapshot's kernel writes into them), the operator's
# config and certificates, and the user while something kept belongs to it.
USER=coriolis
STATE=/var/lib/coriolis-snapshot-agent
SNAPSTORES=/var/lib/coriolis-snapshots
CONFIG=/etc/coriolis-snapshot-agent

rm -rf /var/log/coriolis-snapshot-agent
if [ -n "$(ls -A "$SNAPSTORES" 2>/dev/null)" ]; then
  echo "coriolis-snapshot-agent: kept $SNAPSTORES and the agent's database in /run/coriolis-snapshot-agent:" >&2
  echo "  the snapstore files there may belong to snapshots still live in the kernel. Delete them after" >&2
  echo "  the next reboot." >&2
else
  rmdir "$SNAPSTORES" 2>/dev/null || true
  rm -rf /run/coriolis-snapshot-agent
fi
if [ -d "$CONFIG" ] && ! rmdir "$CONFIG" 2>/dev/null; then
  echo "coriolis-snapshot-agent: kept $CONFIG (your config and certificates)." >&2
fi
if [ -e "$STATE/created-user" ] && getent passwd "$USER" >/dev/null; then
  owned=$(find "$CONFIG" "$SNAPSTORES" /run/coriolis-snapshot-agent \( -user "$USER" -o -group "$USER" \) -print -quit 2>/dev/null || true)
  if [ -z "$owned" ]; then
    userdel "$USER" || true
    # A group of the user's name outlives userdel where USERGROUPS_ENAB is off.
    if getent group "$USER" >/dev/null; then groupdel "$USER" || true; fi
  else
    echo "coriolis-snapshot-agent: kept the user $USER: files kept above belong to it." >&2
  fi
fi
rm -rf "$STATE"
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
