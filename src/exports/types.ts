// The live exports: every volume of every live snapshot, under its NBD export name
// `SNAPSHOT_ID/DISK_ID` and its HTTP consume path. Both doors serve only what the registry
// lists; an export that is withdrawn stops being served at once.
import type { EventEmitter } from 'node:events';
import type { ImageReader } from '../core/image';
import type { ZeroExtents } from './zeros';

/** The REST API's root; the consume paths of the exports live under it. */
export const API_PREFIX = '/api/v1';

/** Where one volume of a snapshot is served. */
export interface ExportAddress {
  /** NBD export name: `SNAPSHOT_ID/DISK_ID`. */
  name: string;
  /** Path of the REST consume route for the same bytes. */
  httpPath: string;
  snapshotId: string;
  trackedDiskId: string;
}

/** An export as the doors serve it. */
export interface Export extends ExportAddress {
  /** A line for NBD_INFO_DESCRIPTION. */
  description: string;
  sizeBytes: number;
  /** CBT of this volume: the map captured with the snapshot, and what its stamps mean. */
  cbt: { generationId: string; snapshotNumber: number; blockSize: number; map: Buffer };
  /** Set when the snapshot's data can no longer be trusted (reads must fail with EIO). */
  failure: string | null;
  /** Ranges known to read as zeros (found by digest passes or zero-marking changes queries). */
  knownZeros: ZeroExtents;
}

export interface ExportEvents {
  /** The export is gone (its snapshot is being deleted): close every connection serving it. */
  removed: [name: string];
  /** The export's snapshot failed: reads must fail from now on, block status may go on. */
  failed: [name: string, reason: string];
}

/** What the doors need of the registry (tests give the NBD server their own). */
export interface ExportSource extends EventEmitter<ExportEvents> {
  list(): Export[];
  get(name: string): Export | undefined;
  /**
   * A reader of the export's image; the caller closes it. Rejects with an AgentError: not-found
   * for an unknown export, conflict with code EIO once the snapshot has failed.
   */
  open(name: string): Promise<ImageReader>;
}
