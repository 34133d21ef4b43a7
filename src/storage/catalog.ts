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
import { showDevice, type DeviceId } from '../core/devices';
import type { Logger } from '../core/log';
import { blkidProbe, type BlkidProbe } from '../host/blkid';
import { activeSwapDevices, excludedDevices } from '../host/exclusions';
import { devName, Sysfs } from '../host/sysfs';
import { mapLimit, PROBE_CONCURRENCY, SECTOR, probe, contentFields, isSwapDisk, type Disk, type DiskSource, type ListOptions, type Partition, type ProbeOptions } from './disks';

/** Device type of a SCSI CD/DVD (TYPE_ROM) in /sys/block/N/device/type. */
const SCSI_TYPE_ROM = '5';
/** The floppy driver's block major. */
const FLOPPY_MAJOR = 2;
/** veeamsnap's snapshot images (also flagged removable by the module). */
const IMAGE_PREFIX = 'veeamimage';
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
