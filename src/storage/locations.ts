// Snapstore locations: the configured snapstore_destinations, the block device beneath each
// (where the kernel writes copy-on-write data, by device ranges), and their capacity, read live
// on every call (the Go agent captured the total once).
import path from 'node:path';
import { showDevice, type DeviceId } from '../core/devices';
import { fsStats } from '../native/blockdev';
import { fileSystemDevice, Sysfs } from '../host/sysfs';
import { AgentError } from '../core/errors';

export interface SnapstoreLocation {
  /** The destination directory; also the location's id in the API. */
  path: string;
  /** The device of the filesystem holding it (st_dev). */
  device: DeviceId;
  /** /dev path of that device; '' when the filesystem has none (major 0: tmpfs, btrfs...). */
  devicePath: string;
}

export interface LocationOptions {
  sysRoot?: string;
  devRoot?: string;
}

/** Rejects (ENOENT...) when the destination cannot be stat'ed. */
export async function resolveLocation(destination: string, options: LocationOptions = {}): Promise<SnapstoreLocation> {
  const device = fileSystemDevice(destination);
  return { path: destination, device, devicePath: await devicePathOf(device, options) };
}

/** /dev/<DEVNAME> from /sys/dev/block/MAJ:MIN/uevent, '' when sysfs has no such block device. */
async function devicePathOf(device: DeviceId, options: LocationOptions): Promise<string> {
  const sysfs = new Sysfs(options.sysRoot);
  const name = await sysfs.nameOf(device);
  if (name === undefined) return '';
  const devname = /^DEVNAME=(.+)$/m.exec(await sysfs.read(name, 'uevent'))?.[1];
  return devname === undefined ? '' : path.join(options.devRoot ?? '/dev', devname);
}


/**
 * The veeamsnap engine gives the kernel snapstore space as ranges of a real block device, so a
 * destination on a filesystem with an anonymous device (major 0: btrfs, tmpfs, overlay, NFS...)
 * cannot be used. The simulated engine works with any filesystem and skips this check.
 */
export function requireBlockDevice(location: SnapstoreLocation): void {
  if (location.device.major === 0) {
    throw new AgentError('invalid', `snapstore destination ${location.path} is on a filesystem without a block device of its own ` +
      `(device ${showDevice(location.device)}: btrfs, tmpfs, overlay, network...): the kernel needs ranges on a real block device`, { code: 'ENOTBLK' });
  }
}

export interface LocationStatus extends SnapstoreLocation {
  totalBytes: number;
  /** What an unprivileged user may still allocate there (statvfs f_bavail). */
  availableBytes: number;
  /** Bytes held by the agent's snapstore files there. */
  allocatedBytes: number;
}

/** `allocated` is the bytes of our files there, or how to get them (the database knows). */
export async function locationStatus(location: SnapstoreLocation,
  allocated: number | ((path: string) => number | Promise<number>)): Promise<LocationStatus> {
  const stats = fsStats(location.path);
  return {
    ...location,
    device: { ...location.device },
    totalBytes: stats.totalBytes,
    availableBytes: stats.availableBytes,
    allocatedBytes: typeof allocated === 'number' ? allocated : await allocated(location.path),
  };
}
