// Snapshots as the lifecycle manager gives them to the edges, in domain terms; api/json.ts
// turns them into the wire JSON.
import type { ExportAddress } from '../exports/types';

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

export interface Snapshot {
  /** Opaque decimal string chosen by the agent; never the kernel's id. */
  id: string;
  createdAt: Date;
  volumes: VolumeSnapshot[];
  state: SnapshotState;
  /** Why a live snapshot may overflow soon (a snapstore could not grow: its location is full), or null. */
  atRisk: string | null;
  exports: ExportAddress[];
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
  /** `zero`: whether the range reads as all zeros, only when the client asked (the changes route's markZeroRanges). */
  ranges: Array<{ offset: number; length: number; zero?: boolean }>;
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
