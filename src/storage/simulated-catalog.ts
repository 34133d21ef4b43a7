// The disks of the simulated engine: files (or loop devices) that play the machine's disks,
// described like real ones (blkid reads their partition tables and filesystems).
import path from 'node:path';
import { sameDevice, showDevice, type DeviceId } from '../core/devices';
import type { Logger } from '../core/log';
import { queryBlockDevice } from '../native/blockdev';
import { blkidProbe, partitionEntries, type BlkidProbe, type PartitionEntry } from '../host/blkid';
import { DiskCatalog } from './catalog';
import { mapLimit, PROBE_CONCURRENCY, SECTOR, probe, contentFields, partitionName, isSwapDisk, type Disk, type DiskSource, type ListOptions, type Partition, type ProbeOptions } from './disks';

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
  return stems.map((stem, i) => (stems.indexOf(stem) === stems.lastIndexOf(stem) ? stem : `${stem}-${entries[i].device.minor}`));
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
    const entry = this.entries[index];
    try {
      const info = queryBlockDevice(entry.path);
      if (info.kind === 'block') {
        const name = await this.catalog.sysfs.nameOf(info);
        if (name === undefined) throw new Error(`no sysfs entry for ${showDevice(info)}`);
        return { ...(await this.catalog.describe(name)), isVirtual: false };
      }
      return await this.describeFile(entry, this.names[index], info);
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
