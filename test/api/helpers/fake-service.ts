// An in-memory AgentService for the REST API tests: disks are files, snapshot images are read
// from those files with the real O_DIRECT reader, and every argument the API passes is recorded
// so tests can check what validation handed over.
import type { HealthProbes } from '../../../src/api/health';
import type { ImageReader, RangeSummary } from '../../../src/core/image';
import { conflict, notFound } from '../../../src/core/errors';
import { DirectReader } from '../../../src/native/reader';
import { ZeroExtents } from '../../../src/exports/zeros';
import type { AgentService } from '../../../src/api/service';
import type { DiskEntry, DiskListOptions, LocationInfo, MappingInfo } from '../../../src/inventory/types';
import type { ChangesRequest, Snapshot, SnapshotChanges, SnapstoreInfo } from '../../../src/snapshots/types';
import type { Disk } from '../../../src/storage/disks';

export interface FakeDiskSpec {
  name: string;
  /** File that plays the disk and, once snapshotted, its image. */
  file: string;
  size: number;
  tracked?: boolean;
  isVirtual?: boolean;
  swap?: boolean;
  mapped?: boolean;
}

export function fakeDisk(spec: FakeDiskSpec, minor: number): Disk {
  return {
    name: spec.name,
    path: `/dev/${spec.name}`,
    device: { major: 252, minor },
    size: spec.size,
    logicalSectorSize: 512,
    physicalSectorSize: 4096,
    alignmentOffset: 0,
    partitionTableType: 'gpt',
    partitionTableUuid: '8df09209-6e27-4f0c-a155-ad327bb8f89b',
    filesystemType: spec.swap === true ? 'swap' : '',
    partitions: [],
    slaves: [],
    isVirtual: spec.isVirtual ?? false,
  };
}

/** Reads like the wrapped reader until `failAfter` bytes from the start, then fails with EIO. */
export class FailingReader implements ImageReader {
  constructor(private readonly inner: ImageReader, private readonly failAfter: number) {}
  get path(): string { return this.inner.path; }
  get size(): number { return this.inner.size; }
  get logicalBlockSize(): number { return this.inner.logicalBlockSize; }
  read(offset: number, length: number): Promise<Buffer> {
    return this.failing(offset, length) ?? this.inner.read(offset, length);
  }
  digest(offset: number, length: number): Promise<RangeSummary> {
    return this.failing(offset, length) ?? this.inner.digest(offset, length);
  }
  private failing(offset: number, length: number): Promise<never> | null {
    if (offset + length <= this.failAfter) return null;
    return Promise.reject(Object.assign(new Error(`EIO: i/o error, read ${this.path}`), { code: 'EIO', errno: -5 }));
  }
  close(): Promise<void> { return this.inner.close(); }
}

/** Health probes that always succeed, for servers whose tests are not about health. */
export const HEALTHY_PROBES: HealthProbes = { engine: async () => 'simulated', database: () => undefined, growthStepBytes: 1024 * 1024 };

const LOCATION = '/mnt/snapstores/snapstore_files';
// Above 2^53, so a test catches any number conversion of the id.
const FIRST_SNAPSHOT_ID = 18446633009895023040n;

export class FakeAgentService implements AgentService {
  readonly disks: Array<{ spec: FakeDiskSpec; disk: Disk }>;
  readonly snapshots = new Map<string, Snapshot>();
  readonly mappings: MappingInfo[] = [];
  readonly locations: LocationInfo[] = [{
    path: LOCATION, devicePath: '/dev/vdb1', device: { major: 252, minor: 17 }, totalBytes: 42006183936, availableBytes: 39791616000, allocatedBytes: 0,
  }];
  /** Readers opened and not yet closed. */
  openReaders = 0;
  /** Bytes asked of image readers so far. */
  bytesRequested = 0;
  /** Disk -> why its snapstore could not grow, as the watchers report it. */
  readonly atRisk = new Map<string, string>();
  /** What passes found to be zero, by `snapshot/disk`, as the export registry keeps it. */
  readonly zeros = new Map<string, ZeroExtents>();
  /** Set to make openImage hand out readers that fail after this many bytes. */
  failReadsAfter: number | undefined;
  readonly calls: { listDisks: DiskListOptions[]; changes: ChangesRequest[]; createSnapshot: string[][] } = {
    listDisks: [], changes: [], createSnapshot: [],
  };
  private nextId = FIRST_SNAPSHOT_ID;

  constructor(specs: FakeDiskSpec[]) {
    this.disks = specs.map((spec, index) => ({ spec, disk: fakeDisk(spec, index * 16) }));
    for (const { spec } of this.disks) {
      if (spec.mapped === true) this.mappings.push({ id: `mapping-${spec.name}`, trackedDiskId: spec.name, storageLocation: LOCATION });
    }
  }

  private entry(item: { spec: FakeDiskSpec; disk: Disk }): DiskEntry {
    return { disk: item.disk, trackingId: item.spec.tracked === true ? item.spec.name : null };
  }

  private tracked(id: string): { spec: FakeDiskSpec; disk: Disk } {
    const item = this.disks.find(({ spec }) => spec.name === id && spec.tracked === true);
    if (item === undefined) throw notFound(`disk ${id} is not tracked`);
    return item;
  }

  async listDisks(options: DiskListOptions): Promise<DiskEntry[]> {
    this.calls.listDisks.push(options);
    return this.disks
      .filter(({ spec }) => (options.includeVirtual || spec.isVirtual !== true) && (options.includeSwap || spec.swap !== true))
      .map((item) => this.entry(item));
  }

  async getDisk(id: string): Promise<DiskEntry> {
    return this.entry(this.tracked(id));
  }

  async listSnapshots(): Promise<Snapshot[]> {
    return [...this.snapshots.values()];
  }

  async getSnapshot(id: string): Promise<Snapshot> {
    const snapshot = this.snapshots.get(id);
    if (snapshot === undefined) throw notFound(`snapshot ${id} not found`);
    return snapshot;
  }

  async createSnapshot(trackedDiskIds: string[]): Promise<Snapshot> {
    this.calls.createSnapshot.push(trackedDiskIds);
    // The agent's own refusals (no mapping, a disk already in a snapshot...) are tested on the
    // real agent (test/e2e/refusals.test.ts); this stand-in only knows its disks.
    const items = trackedDiskIds.map((id) => this.tracked(id));
    const id = String(this.nextId++);
    const snapshot: Snapshot = {
      id,
      createdAt: new Date('2024-05-01T10:00:00.000Z'),
      state: { status: 'ok' },
      atRisk: null,
      volumes: items.map(({ spec, disk }, index) => ({
        trackedDiskId: spec.name,
        original: { devicePath: disk.path, major: disk.device.major, minor: disk.device.minor },
        image: { devicePath: `/dev/veeamimage${index}`, major: 251, minor: index },
        snapshotNumber: 3,
        generationId: '80564045-085a-4b1c-82d4-7410bce63d4a',
        cbtBlockSize: 262144,
        sizeBytes: spec.size,
      })),
      exports: items.map(({ spec }) => ({
        name: `${id}/${spec.name}`,
        httpPath: `/api/v1/snapshots/${id}/consume/${spec.name}`,
        snapshotId: id,
        trackedDiskId: spec.name,
      })),
    };
    this.snapshots.set(id, snapshot);
    return snapshot;
  }

  async deleteSnapshot(id: string): Promise<void> {
    this.snapshots.delete(id);
  }

  /** What the lifecycle does when a snapstore overflows. */
  failSnapshot(id: string, reason: string): void {
    const snapshot = this.snapshots.get(id);
    if (snapshot === undefined) throw new Error(`no snapshot ${id}`);
    snapshot.state = { status: 'failed', reason };
  }

  private volume(snapshotId: string, trackedDiskId: string): Snapshot['volumes'][number] & { snapshot: Snapshot } {
    const snapshot = this.snapshots.get(snapshotId);
    if (snapshot === undefined) throw notFound(`snapshot ${snapshotId} not found`);
    const volume = snapshot.volumes.find((candidate) => candidate.trackedDiskId === trackedDiskId);
    if (volume === undefined) throw notFound(`could not find volume snapshot for ${trackedDiskId}`);
    return { ...volume, snapshot };
  }

  async changes(snapshotId: string, trackedDiskId: string, request: ChangesRequest): Promise<SnapshotChanges> {
    this.calls.changes.push(request);
    const volume = this.volume(snapshotId, trackedDiskId);
    const incremental = request.previousGenerationId === volume.generationId && request.previousNumber !== undefined;
    return {
      trackedDiskId,
      snapshotId,
      cbtBlockSize: volume.cbtBlockSize,
      backupType: incremental ? 'incremental' : 'full',
      ranges: incremental ? [{ offset: 0, length: 262144 }, { offset: 1048576, length: 524288 }] : [{ offset: 0, length: volume.sizeBytes }],
    };
  }

  async openImage(snapshotId: string, trackedDiskId: string): Promise<ImageReader> {
    const volume = this.volume(snapshotId, trackedDiskId);
    if (volume.snapshot.state.status === 'failed') throw conflict(`snapshot ${snapshotId} has failed: ${volume.snapshot.state.reason}`);
    const spec = this.disks.find((item) => item.spec.name === trackedDiskId)!.spec;
    const direct = await DirectReader.open(spec.file);
    this.openReaders++;
    const reader: ImageReader = {
      path: direct.path,
      size: direct.size,
      logicalBlockSize: direct.logicalBlockSize,
      read: (offset, length) => {
        this.bytesRequested += length;
        return direct.read(offset, length);
      },
      digest: (offset, length) => {
        this.bytesRequested += length;
        return direct.digest(offset, length);
      },
      close: async () => {
        await direct.close();
        this.openReaders--;
      },
    };
    return this.failReadsAfter === undefined ? reader : new FailingReader(reader, this.failReadsAfter);
  }

  knownZeros(snapshotId: string, trackedDiskId: string): ZeroExtents {
    this.volume(snapshotId, trackedDiskId);
    const name = `${snapshotId}/${trackedDiskId}`;
    let zeros = this.zeros.get(name);
    if (zeros === undefined) {
      zeros = new ZeroExtents();
      this.zeros.set(name, zeros);
    }
    return zeros;
  }

  async listSnapstores(): Promise<SnapstoreInfo[]> {
    return [...this.snapshots.values()].flatMap((snapshot) => snapshot.volumes.map((volume) => ({
      id: `store-${volume.trackedDiskId}`,
      trackedDiskId: volume.trackedDiskId,
      storageLocation: LOCATION,
      allocatedBytes: 5368709120,
      usedBytes: 1073741824,
      usedBytesAsOf: new Date('2024-05-01T10:05:00.000Z'),
      atRisk: this.atRisk.get(volume.trackedDiskId) ?? null,
    })));
  }

  async listLocations(): Promise<LocationInfo[]> {
    return this.locations;
  }

  async listMappings(): Promise<MappingInfo[]> {
    return this.mappings;
  }

  async createMapping(trackedDiskId: string, locationPath: string): Promise<MappingInfo> {
    this.tracked(trackedDiskId);
    const mapping = { id: `mapping-${trackedDiskId}`, trackedDiskId, storageLocation: locationPath };
    this.mappings.push(mapping);
    return mapping;
  }
}
