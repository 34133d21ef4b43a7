// Domain objects -> the snake_case wire JSON of agent-reference section 1. Field names follow
// the original agent exactly; the additions (state, failure_reason, created_at, exports,
// cbt_block_size_bytes, size) are new keys that old clients ignore.
import type {
  LocationInfo, MappingInfo, Snapshot, SnapshotChanges, SnapshotExport, SnapstoreInfo, VolumeSnapshot,
} from '../service';

export interface VolumeSnapshotJson {
  snapshot_number: number;
  generation_id: string;
  original_device: { tracking_id: string; device_path: string; major: number; minor: number };
  snapshot_image: { device_path: string; major: number; minor: number };
  cbt_block_size_bytes: number;
  size: number;
}

export interface ExportJson {
  nbd_export_name: string;
  http_path: string;
  tracked_disk_id: string;
}

export interface SnapshotJson {
  snapshot_id: string;
  volume_snapshots: VolumeSnapshotJson[];
  state: 'ok' | 'failed';
  /** Only on a failed snapshot. */
  failure_reason?: string;
  /** A snapstore of this snapshot could not grow: it may overflow. */
  at_risk: boolean;
  /** Only when at risk; names the snapstore location. */
  at_risk_reason?: string;
  created_at: string;
  exports: ExportJson[];
}

export function volumeSnapshotToJSON(volume: VolumeSnapshot): VolumeSnapshotJson {
  return {
    snapshot_number: volume.snapshotNumber,
    generation_id: volume.generationId,
    original_device: {
      tracking_id: volume.trackedDiskId,
      device_path: volume.original.devicePath,
      major: volume.original.major,
      minor: volume.original.minor,
    },
    snapshot_image: { device_path: volume.image.devicePath, major: volume.image.major, minor: volume.image.minor },
    cbt_block_size_bytes: volume.cbtBlockSize,
    size: volume.sizeBytes,
  };
}

export function exportToJSON(entry: SnapshotExport): ExportJson {
  return { nbd_export_name: entry.nbdExportName, http_path: entry.httpPath, tracked_disk_id: entry.trackedDiskId };
}

export function snapshotToJSON(snapshot: Snapshot): SnapshotJson {
  const json: SnapshotJson = {
    snapshot_id: snapshot.id,
    volume_snapshots: snapshot.volumes.map(volumeSnapshotToJSON),
    state: snapshot.state.status,
    at_risk: snapshot.atRisk !== null,
    created_at: snapshot.createdAt.toISOString(),
    exports: snapshot.exports.map(exportToJSON),
  };
  if (snapshot.state.status === 'failed') json.failure_reason = snapshot.state.reason;
  if (snapshot.atRisk !== null) json.at_risk_reason = snapshot.atRisk;
  return json;
}

export function changesToJSON(changes: SnapshotChanges): object {
  return {
    tracked_disk_id: changes.trackedDiskId,
    snapshot_id: changes.snapshotId,
    cbt_block_size_bytes: changes.cbtBlockSize,
    backup_type: changes.backupType,
    ranges: changes.ranges.map((range) => ({ start_offset: range.offset, length: range.length })),
  };
}

export function snapstoreToJSON(snapstore: SnapstoreInfo): object {
  return {
    id: snapstore.id,
    tracked_disk_id: snapstore.trackedDiskId,
    storage_location: snapstore.storageLocation,
    allocated_disk_space: snapstore.allocatedBytes,
    used_disk_space: snapstore.usedBytes,
    used_disk_space_as_of: snapstore.usedBytesAsOf?.toISOString() ?? null,
    at_risk: snapstore.atRisk !== null,
    ...(snapstore.atRisk === null ? {} : { at_risk_reason: snapstore.atRisk }),
  };
}

export function locationToJSON(location: LocationInfo): object {
  return {
    available_capacity: location.availableBytes,
    allocated_capacity: location.allocatedBytes,
    total_capacity: location.totalBytes,
    path: location.path,
    device_path: location.devicePath,
    major: location.major,
    minor: location.minor,
  };
}

export function mappingToJSON(mapping: MappingInfo): object {
  return { id: mapping.id, tracked_disk_id: mapping.trackedDiskId, storage_location: mapping.storageLocation };
}
