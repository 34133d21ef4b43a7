// Devices that must never be tracked or snapshotted because snapstore files live on them: every
// device beneath each snapstore destination's filesystem, through any depth of stacking. A
// partition leads to its disk; a dm or md device leads to its members (/sys/class/block/N/slaves),
// which may be partitions, other dm devices, md arrays... So LVM on md on partitions of sda and
// sdb excludes the LV, the md array, both partitions and both disks. (The Go agent looked at one
// level of slaves and at the first partition of each disk only.)
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../core/log';
import { showDevice } from '../core/devices';
import { decodeDeviceNumber, fileSystemDevice, kernelName, type Sysfs } from './sysfs';

/**
 * Kernel names of every device beneath the destinations' filesystems. Rejects when a destination
 * cannot be examined: listing the disk of a snapstore as eligible would be worse than failing.
 * A filesystem without a block device (tmpfs, btrfs, overlay: major 0) has nothing beneath it
 * to exclude; the veeamsnap engine refuses such destinations (see locations.ts).
 */
export async function excludedDevices(sysfs: Sysfs, destinations: readonly string[], log: Logger): Promise<Set<string>> {
  const excluded = new Set<string>();
  for (const destination of destinations) {
    const device = fileSystemDevice(destination);
    const name = await sysfs.nameOf(device);
    if (name === undefined) {
      log.debug({ destination, device: showDevice(device) }, 'snapstore destination is on a filesystem without a block device');
      continue;
    }
    const pending = [name];
    for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
      if (excluded.has(next)) continue;
      excluded.add(next);
      if (sysfs.isPartition(next)) pending.push(await sysfs.parentDisk(next));
      pending.push(...await sysfs.slaves(next));
    }
  }
  return excluded;
}

/** Kernel names of the block devices in use as swap (/proc/swaps). */
export async function activeSwapDevices(sysfs: Sysfs, procRoot: string, devRoot: string): Promise<Set<string>> {
  const names = new Set<string>();
  let text: string;
  try {
    text = await fsp.readFile(path.join(procRoot, 'swaps'), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return names; // a kernel without swap support
    throw err;
  }
  for (const line of text.split('\n').slice(1)) {
    const [field, type] = line.trim().split(/\s+/);
    if (field === undefined || field === '' || type !== 'partition') continue;
    // /proc/swaps escapes blanks and backslashes in octal (\040).
    const name = await swapDeviceName(sysfs, devRoot, field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))));
    if (name !== undefined) names.add(name);
  }
  return names;
}

/**
 * The path is the one swapon opened: /dev/dm-1, or a /dev/mapper node that dmsetup made itself
 * when udev does not run. The node's number says which device it is; a node that is gone since
 * is named by its path under devRoot.
 */
async function swapDeviceName(sysfs: Sysfs, devRoot: string, file: string): Promise<string | undefined> {
  const stats = await fsp.stat(file, { bigint: true }).catch(() => undefined);
  if (stats?.isBlockDevice()) return sysfs.nameOf(decodeDeviceNumber(stats.rdev));
  const relative = path.relative(devRoot, file);
  if (relative.startsWith('..') || path.isAbsolute(relative)) return undefined;
  const name = kernelName(relative);
  return sysfs.exists(name) ? name : undefined;
}
