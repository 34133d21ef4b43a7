// What the REST API needs of the agent, in domain terms: the port it is written against. The
// agent's composition (agent/start.ts) provides it from the inventory, the snapshot manager
// and the export registry; nothing here knows about HTTP. Failures are AgentErrors.
import type { ImageReader } from '../core/image';
import type { ZeroExtents } from '../exports/zeros';
import type { DiskEntry, DiskListOptions, LocationInfo, MappingInfo } from '../inventory/types';
import type { ChangesRequest, Snapshot, SnapshotChanges, SnapstoreInfo } from '../snapshots/types';

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
  /** A reader of one volume's image, through the export registry; Conflict when the snapshot has failed. The caller closes it. */
  openImage(snapshotId: string, trackedDiskId: string): Promise<ImageReader>;
  /** What is known to be all zeros in a served volume's image, kept with its export; passes over its bytes add to it. */
  knownZeros(snapshotId: string, trackedDiskId: string): ZeroExtents;

  listSnapstores(): Promise<SnapstoreInfo[]>;
  listLocations(): Promise<LocationInfo[]>;
  listMappings(): Promise<MappingInfo[]>;
  createMapping(trackedDiskId: string, locationPath: string): Promise<MappingInfo>;
  /** Which snapshot engine runs, on which kernel module and version (for systeminfo). */
  engineInfo?(): { engine: string; module: string | null; moduleVersion: string | null };
}
