// The live exports: every volume of every live snapshot, under its NBD export name
// `SNAPSHOT_ID/DISK_ID` and its HTTP consume path. The NBD server and the REST API serve only
// what this registry lists; an export that is removed must stop being served at once.
import type { EventEmitter } from 'node:events';
import type { ImageReader } from '../engine/types';

export interface Export {
  /** NBD export name: `SNAPSHOT_ID/DISK_ID`. */
  name: string;
  snapshotId: string;
  trackedDiskId: string;
  /** Path of the REST consume route for the same bytes. */
  httpPath: string;
  /** A line for NBD_INFO_DESCRIPTION. */
  description: string;
  sizeBytes: number;
  /** CBT of this volume: the map captured with the snapshot, and what its stamps mean. */
  cbt: { generationId: string; snapshotNumber: number; blockSize: number; map: Buffer };
  /** Set when the snapshot's data can no longer be trusted (reads must fail with EIO). */
  failure: string | null;
}

export interface ExportRegistryEvents {
  /** The export is gone (its snapshot was deleted): close every connection serving it. */
  removed: [name: string];
  /** The export's snapshot failed: reads must fail from now on, block status may go on. */
  failed: [name: string, reason: string];
}

export interface ExportRegistry extends EventEmitter<ExportRegistryEvents> {
  list(): Export[];
  get(name: string): Export | undefined;
  /** A reader of the export's image; rejects (code EIO) when the snapshot failed. Caller closes it. */
  open(name: string): Promise<ImageReader>;
}
