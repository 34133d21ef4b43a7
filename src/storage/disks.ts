// Disk discovery: what /disks lists and what auto_init tracks. Geometry and stacking come from
// sysfs, contents (partition table, filesystem, partition entries) from `blkid -p`. Nothing is
// cached: every call reads the live state, so hot-plugged and removed disks show at once.
//
// Choices where the Go agent was wrong or silent (agent-reference 4, 11):
// - One device failing never fails a listing. A device whose sysfs attributes (its own or a
//   partition's) are missing or malformed is skipped and logged: without its number, size and
//   sector sizes it cannot be tracked. A device whose blkid probe fails is listed with what sysfs
//   knows (empty partition-table and filesystem fields) and logged.
// - Filters run before any probe, so an excluded device is never opened.
// - Devices without a medium (size 0: unattached loop devices, empty readers) are not listed.
// - Swap: a disk is a swap disk when it holds nothing but swap: a whole-disk swap signature, or
//   partitions that are all swap (signature, or in use as swap per /proc/swaps, directly or
//   through dm such as encrypted swap). A disk with a swap partition next to data is listed.
// - Partition sector counts are in 512-byte units, as sysfs gives them, whatever the logical
//   sector size; the fields say so.
import path from 'node:path';
import type { DeviceId } from '../engine/types';
import type { Logger } from '../core/log';
import { queryBlockDevice } from '../native/blockdev';
import { blkidProbe, partitionEntries, type BlkidProbe, type BlkidValues, type PartitionEntry } from '../host/blkid';
import { activeSwapDevices, excludedDevices } from '../host/exclusions';
import { sameDevice, showDevice } from '../core/devices';
import { devName, kernelName, Sysfs } from '../host/sysfs';

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

// ---- wire JSON (agent-reference 4.3)

export interface PartitionJson {
  name: string;
  path?: string;
  sectors: number;
  filesystem_uuid?: string;
  partition_uuid?: string;
  partition_type?: string;
  label?: string;
  filesystem_type?: string;
  start_sector: number;
  end_sector?: number;
  alignment_offset: number;
  device_major?: number;
  device_minor?: number;
}

export interface DiskJson {
  id?: string;
  path: string;
  partition_table_type?: string;
  partition_table_uuid?: string;
  name: string;
  size: number;
  logical_sector_size: number;
  physical_sector_size: number;
  partitions?: PartitionJson[];
  filesystem_type: string;
  alignment_offset: number;
  device_major: number;
  device_minor: number;
  device_slaves?: string[];
  is_virtual: boolean;
}

/** Drops the keys the Go agent omits when empty. */
function omitEmpty<T extends object>(json: T, keys: Array<keyof T>): T {
  for (const key of keys) {
    const value = json[key];
    if (value === undefined || value === '' || value === 0 || (Array.isArray(value) && value.length === 0)) delete json[key];
  }
  return json;
}

/**
 * Sector counts are 512-byte units (what consumers already expect). Unlike the Go agent, disk
 * numbers, size and sector sizes are always present (minor 0 is a real minor). Partitions inside
 * a disk file have no device numbers, so theirs are left out.
 */
export function partitionToJSON(partition: Partition): PartitionJson {
  const json: PartitionJson = {
    name: partition.name,
    path: partition.path,
    sectors: partition.sectors512,
    filesystem_uuid: partition.filesystemUuid,
    partition_uuid: partition.partitionUuid,
    partition_type: partition.partitionType,
    label: partition.label,
    filesystem_type: partition.filesystemType,
    start_sector: partition.startSector512,
    end_sector: partition.sectors512 > 0 ? partition.startSector512 + partition.sectors512 - 1 : 0,
    alignment_offset: partition.alignmentOffset,
  };
  if (partition.device !== null) {
    json.device_major = partition.device.major;
    json.device_minor = partition.device.minor;
  }
  return omitEmpty(json, ['path', 'filesystem_uuid', 'partition_uuid', 'partition_type', 'label', 'filesystem_type', 'end_sector']);
}

/** `id` is present only for a tracked disk, as in the Go agent. */
export function diskToJSON(disk: Disk, trackingId?: string): DiskJson {
  return omitEmpty<DiskJson>({
    id: trackingId,
    path: disk.path,
    partition_table_type: disk.partitionTableType,
    partition_table_uuid: disk.partitionTableUuid,
    name: disk.name,
    size: disk.size,
    logical_sector_size: disk.logicalSectorSize,
    physical_sector_size: disk.physicalSectorSize,
    partitions: disk.partitions.map(partitionToJSON),
    filesystem_type: disk.filesystemType,
    alignment_offset: disk.alignmentOffset,
    device_major: disk.device.major,
    device_minor: disk.device.minor,
    device_slaves: disk.slaves,
    is_virtual: disk.isVirtual,
  }, ['id', 'partition_table_type', 'partition_table_uuid', 'partitions', 'device_slaves']);
}

// ---- discovery

const SECTOR = 512;
/** Device type of a SCSI CD/DVD (TYPE_ROM) in /sys/block/N/device/type. */
const SCSI_TYPE_ROM = '5';
/** The floppy driver's block major. */
const FLOPPY_MAJOR = 2;
/** veeamsnap's snapshot images (also flagged removable by the module). */
const IMAGE_PREFIX = 'veeamimage';
/** blkid probes run at most this many at a time. */
const PROBE_CONCURRENCY = 4;

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < items.length; i = next++) results[i] = await fn(items[i]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

const partitionName = (disk: string, number: number): string => `${disk}${/\d$/.test(disk) ? 'p' : ''}${number}`;

interface ProbeOptions {
  blkid: BlkidProbe;
  log: Logger;
}

/** blkid values, or {} (logged) when the probe fails: the device is still worth listing. */
async function probe(options: ProbeOptions, target: string, window?: { offset: number; size: number }): Promise<BlkidValues> {
  try {
    return await options.blkid(target, window);
  } catch (err) {
    options.log.warn({ err, device: target, window }, 'blkid probe failed: listing the device without its content information');
    return {};
  }
}

function contentFields(values: BlkidValues): Pick<Partition, 'filesystemType' | 'filesystemUuid' | 'label' | 'partitionUuid' | 'partitionType'> {
  return {
    filesystemType: values.TYPE ?? '',
    filesystemUuid: values.UUID ?? '',
    label: values.LABEL ?? '',
    partitionUuid: values.PART_ENTRY_UUID ?? '',
    partitionType: values.PART_ENTRY_TYPE ?? '',
  };
}

/** Nothing but swap on it (see the header). `swapStack` says whether a device is swap in use. */
async function isSwapDisk(disk: Disk, swapStack: (name: string) => Promise<boolean>): Promise<boolean> {
  if (disk.filesystemType === 'swap' || (await swapStack(disk.name))) return true;
  if (disk.partitions.length === 0) return false;
  for (const partition of disk.partitions) {
    if (partition.filesystemType !== 'swap' && !(await swapStack(kernelName(partition.name)))) return false;
  }
  return true;
}

export interface DiskCatalogOptions {
  log: Logger;
  /** snapstore_destinations: the devices beneath them are never listed. */
  destinations: readonly string[];
  sysRoot?: string;
  devRoot?: string;
  procRoot?: string;
  blkid?: BlkidProbe;
  /** Snapshot images the engine reports, besides veeamimage* devices. */
  isImage?: (device: DeviceId) => boolean;
}

interface ListContext {
  excluded: Set<string>;
  activeSwap: Set<string>;
  includeVirtual: boolean;
  includeSwap: boolean;
}

export class DiskCatalog implements DiskSource {
  readonly sysfs: Sysfs;
  private readonly devRoot: string;
  private readonly procRoot: string;
  private readonly probeOptions: ProbeOptions;

  constructor(private readonly options: DiskCatalogOptions) {
    this.sysfs = new Sysfs(options.sysRoot);
    this.devRoot = options.devRoot ?? '/dev';
    this.procRoot = options.procRoot ?? '/proc';
    this.probeOptions = { blkid: options.blkid ?? blkidProbe, log: options.log };
  }

  /** Kernel names of the devices beneath the snapstore destinations (exclusions.ts). */
  excludedDevices(): Promise<Set<string>> {
    return excludedDevices(this.sysfs, this.options.destinations, this.options.log);
  }

  async list(options: ListOptions = {}): Promise<Disk[]> {
    const context = await this.context(options.includeVirtual ?? false, options.includeSwap ?? false);
    const disks = await mapLimit(await this.sysfs.blockNames(), PROBE_CONCURRENCY, (name) => this.describeListed(name, context));
    return disks.filter((disk): disk is Disk => disk !== undefined);
  }

  async get(id: string): Promise<Disk | undefined> {
    if (!(await this.sysfs.blockNames()).includes(id)) return undefined; // also keeps '../x' out of sysfs paths
    return this.describeListed(id, await this.context(true, true));
  }

  async byDevice(device: DeviceId): Promise<Disk | undefined> {
    const name = await this.sysfs.nameOf(device);
    return name === undefined ? undefined : this.get(name);
  }

  /**
   * One whole device as sysfs and blkid describe it, without any filter; rejects when its sysfs
   * attributes are unusable. Simulated mode uses it for configured loop devices.
   */
  async describe(name: string): Promise<Disk> {
    const { sysfs } = this;
    const devPath = (kernel: string): string => path.join(this.devRoot, devName(kernel));
    // All of sysfs first: a device it cannot describe is never probed.
    const partitions = await Promise.all((await sysfs.partitions(name)).map(async (partition) => ({
      name: devName(partition),
      path: devPath(partition),
      device: await sysfs.device(partition),
      startSector512: await sysfs.readNumber(partition, 'start'),
      sectors512: await sysfs.readNumber(partition, 'size'),
      alignmentOffset: await sysfs.readNumber(partition, 'alignment_offset'),
    })));
    const disk = {
      name,
      path: devPath(name),
      device: await sysfs.device(name),
      size: (await sysfs.readNumber(name, 'size')) * SECTOR,
      logicalSectorSize: await sysfs.readNumber(name, 'queue/logical_block_size'),
      physicalSectorSize: await sysfs.readNumber(name, 'queue/physical_block_size'),
      alignmentOffset: await sysfs.readNumber(name, 'alignment_offset'),
      slaves: (await sysfs.slaves(name)).map(devPath),
      isVirtual: await sysfs.isVirtual(name),
    };
    const values = await probe(this.probeOptions, disk.path);
    const probed: Partition[] = [];
    for (const partition of partitions) probed.push({ ...partition, ...contentFields(await probe(this.probeOptions, partition.path)) });
    return {
      ...disk,
      partitionTableType: values.PTTYPE ?? '',
      partitionTableUuid: values.PTUUID ?? '',
      filesystemType: values.TYPE ?? '',
      partitions: probed,
    };
  }

  private async context(includeVirtual: boolean, includeSwap: boolean): Promise<ListContext> {
    const [excluded, activeSwap] = await Promise.all([
      this.excludedDevices(),
      activeSwapDevices(this.sysfs, this.procRoot, this.devRoot),
    ]);
    return { excluded, activeSwap, includeVirtual, includeSwap };
  }

  /** The device as listed, undefined when a filter hides it or it cannot be read (logged). */
  private async describeListed(name: string, context: ListContext): Promise<Disk | undefined> {
    const { log } = this.options;
    try {
      const reason = await this.hiddenBecause(name, context);
      if (reason !== undefined) {
        log.debug({ device: name, reason }, 'device not listed');
        return undefined;
      }
      const disk = await this.describe(name);
      if (!context.includeSwap && (await isSwapDisk(disk, (device) => this.inUseAsSwap(device, context.activeSwap)))) {
        log.debug({ device: name, reason: 'swap' }, 'device not listed');
        return undefined;
      }
      return disk;
    } catch (err) {
      log.warn({ err, device: name }, 'cannot read the device from sysfs: not listed');
      return undefined;
    }
  }

  /** In /proc/swaps, or everything built on it is (swap on dm-crypt or LVM). */
  private async inUseAsSwap(name: string, activeSwap: Set<string>): Promise<boolean> {
    if (activeSwap.has(name)) return true;
    const holders = await this.sysfs.holders(name);
    for (const holder of holders) if (!(await this.inUseAsSwap(holder, activeSwap))) return false;
    return holders.length > 0;
  }

  /** Filters that need sysfs only, applied before anything opens the device. */
  private async hiddenBecause(name: string, context: ListContext): Promise<string | undefined> {
    const { sysfs } = this;
    if (context.excluded.has(name)) return 'holds a snapstore destination';
    if (name.startsWith(IMAGE_PREFIX)) return 'snapshot image';
    const device = await sysfs.device(name);
    if (this.options.isImage?.(device)) return `snapshot image ${showDevice(device)}`;
    if (device.major === FLOPPY_MAJOR) return 'floppy';
    if ((await sysfs.read(name, 'removable')) !== '0') return 'removable';
    if ((await sysfs.read(name, 'device/type').catch(() => undefined)) === SCSI_TYPE_ROM) return 'CD/DVD';
    if (!context.includeVirtual && (await sysfs.isVirtual(name))) return 'virtual';
    if ((await sysfs.readNumber(name, 'size')) === 0) return 'no medium (size 0)';
    return undefined;
  }
}

// ---- simulated mode

export interface SimulatedDiskEntry {
  /** A disk image file or a loop device. */
  path: string;
  /** The number the simulated engine gives it. */
  device: DeviceId;
}

export interface SimulatedDiskOptions {
  log: Logger;
  blkid?: BlkidProbe;
  sysRoot?: string;
  devRoot?: string;
}

/**
 * Names of simulated disks: a block device keeps its kernel name; a file is named after its
 * base name without extension ("/srv/disk0.img" is "disk0"), and files whose names would
 * collide all get "-<minor>" appended ("disk-0", "disk-1"), so names depend only on the config.
 */
function simulatedNames(entries: readonly SimulatedDiskEntry[]): string[] {
  const stems = entries.map((entry) => path.basename(entry.path, path.extname(entry.path)));
  return stems.map((stem, i) => (stems.indexOf(stem) === stems.lastIndexOf(stem) ? stem : `${stem}-${entries[i]!.device.minor}`));
}

/**
 * In simulated mode the configured files (or loop devices) are the machine's disks. They are
 * always listed as physical disks (isVirtual false), whatever device backs them; a file's
 * partitions come from its partition table and carry no device numbers.
 */
export class SimulatedDiskCatalog implements DiskSource {
  private readonly catalog: DiskCatalog;
  private readonly probeOptions: ProbeOptions;
  private readonly names: string[];

  constructor(private readonly entries: readonly SimulatedDiskEntry[], private readonly options: SimulatedDiskOptions) {
    this.catalog = new DiskCatalog({ ...options, destinations: [] });
    this.probeOptions = { blkid: options.blkid ?? blkidProbe, log: options.log };
    this.names = simulatedNames(entries);
  }

  async list(options: ListOptions = {}): Promise<Disk[]> {
    const disks = await mapLimit(this.entries.map((_, i) => i), PROBE_CONCURRENCY, (i) => this.describeListed(i));
    const listed: Disk[] = [];
    for (const disk of disks) {
      if (disk !== undefined && (options.includeSwap || !(await isSwapDisk(disk, async () => false)))) listed.push(disk);
    }
    return listed;
  }

  /** Configs name few disks: describing them all to find one is cheap. */
  async get(id: string): Promise<Disk | undefined> {
    return (await this.list({ includeSwap: true })).find((disk) => disk.name === id);
  }

  async byDevice(device: DeviceId): Promise<Disk | undefined> {
    const index = this.entries.findIndex((entry) => sameDevice(entry.device, device));
    return index < 0 ? undefined : this.describeListed(index);
  }

  private async describeListed(index: number): Promise<Disk | undefined> {
    const entry = this.entries[index]!;
    try {
      const info = queryBlockDevice(entry.path);
      if (info.kind === 'block') {
        const name = await this.catalog.sysfs.nameOf(info);
        if (name === undefined) throw new Error(`no sysfs entry for ${showDevice(info)}`);
        return { ...(await this.catalog.describe(name)), isVirtual: false };
      }
      return await this.describeFile(entry, this.names[index]!, info);
    } catch (err) {
      this.options.log.warn({ err, disk: entry.path }, 'cannot read the simulated disk: not listed');
      return undefined;
    }
  }

  private async describeFile(entry: SimulatedDiskEntry, name: string, info: { size: number; logicalBlockSize: number; physicalBlockSize: number }): Promise<Disk> {
    const values = await probe(this.probeOptions, entry.path);
    let entries: PartitionEntry[] = [];
    if (values.PTTYPE) {
      try {
        entries = await partitionEntries(entry.path);
      } catch (err) {
        this.options.log.warn({ err, disk: entry.path }, 'cannot read the partition table: listing the disk without partitions');
      }
    }
    const partitions: Partition[] = [];
    for (const part of entries) {
      const window = { offset: part.startSector512 * SECTOR, size: part.sectors512 * SECTOR };
      partitions.push({
        name: partitionName(name, part.number),
        path: '',
        device: null,
        startSector512: part.startSector512,
        sectors512: part.sectors512,
        alignmentOffset: 0,
        ...contentFields(await probe(this.probeOptions, entry.path, window)),
        partitionUuid: part.uuid,
        partitionType: part.type,
      });
    }
    return {
      name,
      path: entry.path,
      device: { ...entry.device },
      size: info.size,
      logicalSectorSize: info.logicalBlockSize,
      physicalSectorSize: info.physicalBlockSize,
      alignmentOffset: 0,
      partitionTableType: values.PTTYPE ?? '',
      partitionTableUuid: values.PTUUID ?? '',
      filesystemType: values.TYPE ?? '',
      partitions,
      slaves: [],
      isVirtual: false,
    };
  }
}

/** The simulated disks, as the default listing shows them. */
export function simulatedDisks(entries: readonly SimulatedDiskEntry[], options: SimulatedDiskOptions): Promise<Disk[]> {
  return new SimulatedDiskCatalog(entries, options).list();
}
