// What the agent offers its edges (REST API, NBD server, demo), in domain terms. The REST
// layer turns these objects into the snake_case JSON of the wire contract; nothing here knows
// about HTTP. Failures are AgentErrors (src/errors.ts).
import type { ImageReader } from './engine/types';
import type { Disk } from './storage/disks';

export type { Disk };

export interface DeviceRef {
  devicePath: string;
  major: number;
  minor: number;
}

export interface VolumeSnapshot {
  /** Tracking id of the disk (its kernel name). */
  trackedDiskId: string;
  original: DeviceRef;
  image: DeviceRef;
  snapshotNumber: number;
  generationId: string;
  /** Bytes covered by one CBT map entry of this disk. */
  cbtBlockSize: number;
  sizeBytes: number;
}

export type SnapshotState =
  | { status: 'ok' }
  /** The data of at least one volume can no longer be trusted, e.g. its snapstore overflowed. */
  | { status: 'failed'; reason: string };

export interface SnapshotExport {
  /** NBD export name, `SNAPSHOT_ID/DISK_ID`. */
  nbdExportName: string;
  /** Path of the HTTP consume route. */
  httpPath: string;
  trackedDiskId: string;
}

export interface Snapshot {
  /** Opaque decimal string chosen by the agent; never the kernel's id. */
  id: string;
  createdAt: Date;
  volumes: VolumeSnapshot[];
  state: SnapshotState;
  /** Why a live snapshot may overflow soon (a snapstore could not grow: its location is full), or null. */
  atRisk: string | null;
  exports: SnapshotExport[];
}

export interface ChangesRequest {
  previousGenerationId?: string | undefined;
  previousNumber?: number | undefined;
}

export interface SnapshotChanges {
  trackedDiskId: string;
  snapshotId: string;
  cbtBlockSize: number;
  backupType: 'full' | 'incremental';
  ranges: Array<{ offset: number; length: number }>;
}

export interface SnapstoreInfo {
  id: string;
  trackedDiskId: string;
  storageLocation: string;
  allocatedBytes: number;
  /** Copy-on-write bytes consumed, as of `usedBytesAsOf` (null: nothing reported yet). */
  usedBytes: number;
  usedBytesAsOf: Date | null;
  /** Why the snapstore could not grow (names the location, never a path), or null. */
  atRisk: string | null;
}

export interface LocationInfo {
  path: string;
  devicePath: string;
  major: number;
  minor: number;
  totalBytes: number;
  availableBytes: number;
  allocatedBytes: number;
}

export interface MappingInfo {
  id: string;
  trackedDiskId: string;
  storageLocation: string;
}

export interface DiskListOptions {
  includeVirtual: boolean;
  includeSwap: boolean;
}

/** A disk as listed: `trackingId` is set when the agent tracks it (the JSON's `id`). */
export interface DiskEntry {
  disk: Disk;
  trackingId: string | null;
}

export interface AgentService {
  listDisks(options: DiskListOptions): Promise<DiskEntry[]>;
  /** A tracked disk; NotFound when the id is not tracked or the disk is gone. */
  getDisk(id: string): Promise<DiskEntry>;

  listSnapshots(): Promise<Snapshot[]>;
  getSnapshot(id: string): Promise<Snapshot>;
  /** Invalid for an empty or duplicate list, NotFound for unknown disks or missing mappings, Conflict when a disk already has a snapshot. */
  createSnapshot(trackedDiskIds: string[]): Promise<Snapshot>;
  /** Deleting an unknown snapshot succeeds, as the original agent does. */
  deleteSnapshot(id: string): Promise<void>;
  changes(snapshotId: string, trackedDiskId: string, request: ChangesRequest): Promise<SnapshotChanges>;
  /** A reader of one volume's image; Conflict when the snapshot has failed. The caller closes it. */
  openImage(snapshotId: string, trackedDiskId: string): Promise<ImageReader>;

  listSnapstores(): Promise<SnapstoreInfo[]>;
  listLocations(): Promise<LocationInfo[]>;
  listMappings(): Promise<MappingInfo[]>;
  createMapping(trackedDiskId: string, locationPath: string): Promise<MappingInfo>;
  /** Which snapshot engine runs, on which kernel module and version (for systeminfo). */
  engineInfo?(): { engine: string; module: string | null; moduleVersion: string | null };
}
