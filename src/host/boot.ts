// Which boot this is: kernel state (trackers, snapshots, snapstores) lives exactly as long.
import fs from 'node:fs';

/** /proc/sys/kernel/random/boot_id: changes at every boot. */
export function currentBootId(): string {
  return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}
