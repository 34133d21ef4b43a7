// Disks as the agent sees them, whichever catalog found them: the real one (catalog.ts: sysfs
// and blkid) or the simulated engine's (simulated-catalog.ts: disk files). Both describe a
// disk's content the same way, with the helpers at the end of this file.
import type { DeviceId } from '../core/devices';
import type { Logger } from '../core/log';
import type { BlkidProbe, BlkidValues } from '../host/blkid';
import { kernelName } from '../host/sysfs';

export interface Partition {
  /** DEVNAME, e.g. "sda1"; inside a disk file, the name the kernel would give it. */
  name: string;
  /** /dev/<DEVNAME>; '' for a partition inside a disk file, which has no device node. */
  path: string;
  /** null for a partition inside a disk file. */
  device: DeviceId | null;
  startSector512: number;
  sectors512: number;
  alignmentOffset: number;
  filesystemType: string;
  filesystemUuid: string;
  label: string;
  /** GPT partition GUID, or "<dos disk id>-NN". */
  partitionUuid: string;
  /** GPT type GUID, or "0xNN" on dos. */
  partitionType: string;
}

export interface Disk {
  /** Kernel name ("vda", "nvme0n1"), which is also the tracking id. */
  name: string;
  path: string;
  device: DeviceId;
  /** Bytes. */
  size: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  alignmentOffset: number;
  /** blkid PTTYPE ("gpt", "dos"...), '' when none. */
  partitionTableType: string;
  /** blkid PTUUID: GPT disk GUID or 8-hex dos disk id, '' when none. */
  partitionTableUuid: string;
  /** blkid TYPE of the whole device ("swap", "LVM2_member", "ext4"...), '' when none. */
  filesystemType: string;
  partitions: Partition[];
  /** /dev paths of the devices this one is built on (dm and md members). */
  slaves: string[];
  isVirtual: boolean;
}

export interface ListOptions {
  /** Also list loop, dm, md, zram, nbd... (devices under /sys/devices/virtual/block). */
  includeVirtual?: boolean;
  /** Also list disks that hold nothing but swap. */
  includeSwap?: boolean;
}

/** What the API and the lifecycle need from discovery, real or simulated. */
export interface DiskSource {
  list(options?: ListOptions): Promise<Disk[]>;
  /** By tracking id (kernel name), virtual and swap disks included. */
  get(id: string): Promise<Disk | undefined>;
  byDevice(device: DeviceId): Promise<Disk | undefined>;
}

/** The disks auto_init puts under tracking at start: the default listing. */
export function eligibleDisks(source: DiskSource): Promise<Disk[]> {
  return source.list({});
}

// ---- describing a disk's content (both catalogs)

export const SECTOR = 512;
/** blkid probes run at most this many at a time. */
export const PROBE_CONCURRENCY = 4;

export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < items.length; i = next++) results[i] = await fn(items[i]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export const partitionName = (disk: string, number: number): string => `${disk}${/\d$/.test(disk) ? 'p' : ''}${number}`;

export interface ProbeOptions {
  blkid: BlkidProbe;
  log: Logger;
}

/** blkid values, or {} (logged) when the probe fails: the device is still worth listing. */
export async function probe(options: ProbeOptions, target: string, window?: { offset: number; size: number }): Promise<BlkidValues> {
  try {
    return await options.blkid(target, window);
  } catch (err) {
    options.log.warn({ err, device: target, window }, 'blkid probe failed: listing the device without its content information');
    return {};
  }
}

export function contentFields(values: BlkidValues): Pick<Partition, 'filesystemType' | 'filesystemUuid' | 'label' | 'partitionUuid' | 'partitionType'> {
  return {
    filesystemType: values.TYPE ?? '',
    filesystemUuid: values.UUID ?? '',
    label: values.LABEL ?? '',
    partitionUuid: values.PART_ENTRY_UUID ?? '',
    partitionType: values.PART_ENTRY_TYPE ?? '',
  };
}

/** Nothing but swap on it (catalog.ts says what counts). `swapStack` says whether a device is swap in use. */
export async function isSwapDisk(disk: Disk, swapStack: (name: string) => Promise<boolean>): Promise<boolean> {
  if (disk.filesystemType === 'swap' || (await swapStack(disk.name))) return true;
  if (disk.partitions.length === 0) return false;
  for (const partition of disk.partitions) {
    if (partition.filesystemType !== 'swap' && !(await swapStack(kernelName(partition.name)))) return false;
  }
  return true;
}
