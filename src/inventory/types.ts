// What the inventory gives the edges: disks as listed, snapstore locations and mappings.
import type { Disk } from '../storage/disks';
import type { LocationStatus } from '../storage/locations';

/** A snapstore location as listed: where it is, its space, and what the agent's files take. */
export type LocationInfo = LocationStatus;

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
