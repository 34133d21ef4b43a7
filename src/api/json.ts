// Domain objects -> the snake_case wire JSON of agent-reference section 1. Field names follow
// the original agent exactly; the additions (state, failure_reason, created_at, exports,
// cbt_block_size_bytes, size) are new keys that old clients ignore.
import type { ExportAddress } from '../exports/types';
import type { NetworkInterface } from '../host/system';
import type { LocationInfo, MappingInfo } from '../inventory/types';
import type { Snapshot, SnapshotChanges, SnapstoreInfo, VolumeSnapshot } from '../snapshots/types';
import type { Disk, Partition } from '../storage/disks';

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

export function exportToJSON(entry: ExportAddress): ExportJson {
  return { nbd_export_name: entry.name, http_path: entry.httpPath, tracked_disk_id: entry.trackedDiskId };
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
    // `zero` only when the client asked for it (markZeroRanges): old clients get the JSON they always did.
    ranges: changes.ranges.map((range) => (range.zero === undefined
      ? { start_offset: range.offset, length: range.length }
      : { start_offset: range.offset, length: range.length, zero: range.zero })),
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

/** agent-reference 5.1 */
export interface LocationJson {
  available_capacity: number;
  allocated_capacity: number;
  total_capacity: number;
  path: string;
  device_path: string;
  major: number;
  minor: number;
}

export function locationToJSON(location: LocationInfo): LocationJson {
  return {
    available_capacity: location.availableBytes,
    allocated_capacity: location.allocatedBytes,
    total_capacity: location.totalBytes,
    path: location.path,
    device_path: location.devicePath,
    major: location.device.major,
    minor: location.device.minor,
  };
}

export function mappingToJSON(mapping: MappingInfo): object {
  return { id: mapping.id, tracked_disk_id: mapping.trackedDiskId, storage_location: mapping.storageLocation };
}

// ---- disks (agent-reference 4.3)

export interface PartitionJson {
  name: string;
  path?: string;
  sectors: number;
  filesystem_uuid?: string;
  partition_uuid?: string;
  partition_type?: string;
  label?: string;
  filesystem_type?: string;
  start_sector: number;
  end_sector?: number;
  alignment_offset: number;
  device_major?: number;
  device_minor?: number;
}

export interface DiskJson {
  id?: string;
  path: string;
  partition_table_type?: string;
  partition_table_uuid?: string;
  name: string;
  size: number;
  logical_sector_size: number;
  physical_sector_size: number;
  partitions?: PartitionJson[];
  filesystem_type: string;
  alignment_offset: number;
  device_major: number;
  device_minor: number;
  device_slaves?: string[];
  is_virtual: boolean;
}

/** Drops the keys the Go agent omits when empty. */
function omitEmpty<T extends object>(json: T, keys: Array<keyof T>): T {
  for (const key of keys) {
    const value = json[key];
    if (value === undefined || value === '' || value === 0 || (Array.isArray(value) && value.length === 0)) delete json[key];
  }
  return json;
}

/**
 * Sector counts are 512-byte units (what consumers already expect). Unlike the Go agent, disk
 * numbers, size and sector sizes are always present (minor 0 is a real minor). Partitions inside
 * a disk file have no device numbers, so theirs are left out.
 */
export function partitionToJSON(partition: Partition): PartitionJson {
  const json: PartitionJson = {
    name: partition.name,
    path: partition.path,
    sectors: partition.sectors512,
    filesystem_uuid: partition.filesystemUuid,
    partition_uuid: partition.partitionUuid,
    partition_type: partition.partitionType,
    label: partition.label,
    filesystem_type: partition.filesystemType,
    start_sector: partition.startSector512,
    end_sector: partition.sectors512 > 0 ? partition.startSector512 + partition.sectors512 - 1 : 0,
    alignment_offset: partition.alignmentOffset,
  };
  if (partition.device !== null) {
    json.device_major = partition.device.major;
    json.device_minor = partition.device.minor;
  }
  return omitEmpty(json, ['path', 'filesystem_uuid', 'partition_uuid', 'partition_type', 'label', 'filesystem_type', 'end_sector']);
}

/** `id` is present only for a tracked disk, as in the Go agent. */
export function diskToJSON(disk: Disk, trackingId?: string): DiskJson {
  return omitEmpty<DiskJson>({
    id: trackingId,
    path: disk.path,
    partition_table_type: disk.partitionTableType,
    partition_table_uuid: disk.partitionTableUuid,
    name: disk.name,
    size: disk.size,
    logical_sector_size: disk.logicalSectorSize,
    physical_sector_size: disk.physicalSectorSize,
    partitions: disk.partitions.map(partitionToJSON),
    filesystem_type: disk.filesystemType,
    alignment_offset: disk.alignmentOffset,
    device_major: disk.device.major,
    device_minor: disk.device.minor,
    device_slaves: disk.slaves,
    is_virtual: disk.isVirtual,
  }, ['id', 'partition_table_type', 'partition_table_uuid', 'partitions', 'device_slaves']);
}

// ---- network interfaces (agent-reference section 8)

export interface InterfaceJson {
  interface_type: string;
  mac_address: string;
  ip_addresses: string[];
  nic_name: string;
  slaves?: Array<InterfaceJson | null>;
}

export function interfaceToJSON(nic: NetworkInterface): InterfaceJson {
  const json: InterfaceJson = { interface_type: nic.type, mac_address: nic.macAddress, ip_addresses: nic.ipAddresses, nic_name: nic.name };
  if (nic.slaves !== undefined) json.slaves = nic.slaves.map((slave) => (slave === null ? null : interfaceToJSON(slave)));
  return json;
}
