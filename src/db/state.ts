// Typed access to the agent's rows. Each method is one statement; callers group the ones
// that make up a state change with `transaction`, so a crash never leaves half of one.
import type { Db } from './database';

export interface TrackedDiskRow {
  id: string;
  path: string;
  major: number;
  minor: number;
}

export interface MappingRow {
  id: string;
  diskId: string;
  location: string;
}

export type SnapshotRowState = 'creating' | 'ok' | 'failed' | 'deleting';

export interface SnapshotRow {
  id: string;
  engineHandle: string | null;
  state: SnapshotRowState;
  failure: string | null;
  createdAt: string;
}

export interface SnapstoreRow {
  id: string;
  snapshotId: string;
  diskId: string;
  location: string;
  directory: string;
  storageMajor: number;
  storageMinor: number;
  state: 'creating' | 'active' | 'cleaning';
  /** Why growth is stalled (the location is full...), or null. */
  atRisk: string | null;
  /** Copy-on-write bytes the engine last reported consumed, and when that was true (ISO time), or null before any report. */
  filledBytes: number;
  filledAt: string | null;
}

export interface SnapstoreFileRow {
  path: string;
  snapstoreId: string;
  size: number;
  state: 'allocating' | 'added';
}

export interface VolumeRow {
  snapshotId: string;
  diskId: string;
  snapstoreId: string;
  originalPath: string;
  originalMajor: number;
  originalMinor: number;
  imagePath: string | null;
  imageMajor: number | null;
  imageMinor: number | null;
  generationId: string | null;
  snapshotNumber: number | null;
  cbtBlockSize: number | null;
  sizeBytes: number | null;
  cbtMap: Buffer | null;
}

export interface ExportRow {
  name: string;
  snapshotId: string;
  diskId: string;
  httpPath: string;
}

const EXPORT_COLUMNS = 'name, snapshot_id AS snapshotId, disk_id AS diskId, http_path AS httpPath';
const SNAPSHOT_COLUMNS = 'id, engine_handle AS engineHandle, state, failure, created_at AS createdAt';
const SNAPSTORE_COLUMNS = `id, snapshot_id AS snapshotId, disk_id AS diskId, location, directory,
  storage_major AS storageMajor, storage_minor AS storageMinor, state, at_risk AS atRisk,
  filled_bytes AS filledBytes, filled_at AS filledAt`;
const VOLUME_COLUMNS = `snapshot_id AS snapshotId, disk_id AS diskId, snapstore_id AS snapstoreId,
  original_path AS originalPath, original_major AS originalMajor, original_minor AS originalMinor,
  image_path AS imagePath, image_major AS imageMajor, image_minor AS imageMinor,
  generation_id AS generationId, snapshot_number AS snapshotNumber, cbt_block_size AS cbtBlockSize,
  size_bytes AS sizeBytes, cbt_map AS cbtMap`;

export class AgentState {
  constructor(readonly db: Db) {}

  transaction<T>(work: () => T): T {
    return this.db.transaction(work)();
  }

  // ---- meta

  getMeta(key: string): string | undefined {
    return (this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  setMeta(key: string, value: string): void {
    this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  // ---- tracked disks and mappings

  trackedDisks(): TrackedDiskRow[] {
    return this.db.prepare('SELECT id, path, major, minor FROM tracked_disks ORDER BY id').all() as TrackedDiskRow[];
  }

  trackedDisk(id: string): TrackedDiskRow | undefined {
    return this.db.prepare('SELECT id, path, major, minor FROM tracked_disks WHERE id = ?').get(id) as TrackedDiskRow | undefined;
  }

  /** Inserts or refreshes a disk; a disk that got another kernel name keeps none of the old row. */
  upsertTrackedDisk(row: TrackedDiskRow): void {
    this.db.prepare('DELETE FROM tracked_disks WHERE major = ? AND minor = ? AND id <> ?').run(row.major, row.minor, row.id);
    this.db.prepare(`INSERT INTO tracked_disks (id, path, major, minor) VALUES (@id, @path, @major, @minor)
      ON CONFLICT (id) DO UPDATE SET path = excluded.path, major = excluded.major, minor = excluded.minor`).run(row);
  }

  deleteTrackedDisk(id: string): void {
    this.db.prepare('DELETE FROM tracked_disks WHERE id = ?').run(id);
  }

  mappings(): MappingRow[] {
    return this.db.prepare('SELECT id, disk_id AS diskId, location FROM mappings ORDER BY disk_id').all() as MappingRow[];
  }

  mappingOf(diskId: string): MappingRow | undefined {
    return this.db.prepare('SELECT id, disk_id AS diskId, location FROM mappings WHERE disk_id = ?').get(diskId) as MappingRow | undefined;
  }

  insertMapping(row: MappingRow): void {
    this.db.prepare('INSERT INTO mappings (id, disk_id, location) VALUES (@id, @diskId, @location)').run(row);
  }

  // ---- snapshots

  snapshots(): SnapshotRow[] {
    return this.db.prepare(`SELECT ${SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created_at, id`).all() as SnapshotRow[];
  }

  snapshot(id: string): SnapshotRow | undefined {
    return this.db.prepare(`SELECT ${SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?`).get(id) as SnapshotRow | undefined;
  }

  insertSnapshot(row: SnapshotRow): void {
    this.db.prepare(`INSERT INTO snapshots (id, engine_handle, state, failure, created_at)
      VALUES (@id, @engineHandle, @state, @failure, @createdAt)`).run(row);
  }

  setSnapshotHandle(id: string, engineHandle: string): void {
    this.db.prepare('UPDATE snapshots SET engine_handle = ? WHERE id = ?').run(engineHandle, id);
  }

  setSnapshotState(id: string, state: SnapshotRowState, failure: string | null = null): void {
    this.db.prepare('UPDATE snapshots SET state = ?, failure = coalesce(?, failure) WHERE id = ?').run(state, failure, id);
  }

  deleteSnapshot(id: string): void {
    this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id);
  }

  /** The live snapshot holding `diskId`, if any. */
  snapshotOfDisk(diskId: string): SnapshotRow | undefined {
    return this.db.prepare(`SELECT ${SNAPSHOT_COLUMNS.split(', ').map((c) => `s.${c}`).join(', ')}
      FROM snapshots s JOIN volume_snapshots v ON v.snapshot_id = s.id WHERE v.disk_id = ?`).get(diskId) as SnapshotRow | undefined;
  }

  // ---- volumes

  volumes(snapshotId: string): VolumeRow[] {
    return this.db.prepare(`SELECT ${VOLUME_COLUMNS} FROM volume_snapshots WHERE snapshot_id = ? ORDER BY rowid`).all(snapshotId) as VolumeRow[];
  }

  volume(snapshotId: string, diskId: string): VolumeRow | undefined {
    return this.db.prepare(`SELECT ${VOLUME_COLUMNS} FROM volume_snapshots WHERE snapshot_id = ? AND disk_id = ?`)
      .get(snapshotId, diskId) as VolumeRow | undefined;
  }

  insertVolume(row: VolumeRow): void {
    this.db.prepare(`INSERT INTO volume_snapshots (snapshot_id, disk_id, snapstore_id, original_path, original_major,
      original_minor, image_path, image_major, image_minor, generation_id, snapshot_number, cbt_block_size, size_bytes, cbt_map)
      VALUES (@snapshotId, @diskId, @snapstoreId, @originalPath, @originalMajor, @originalMinor, @imagePath, @imageMajor,
      @imageMinor, @generationId, @snapshotNumber, @cbtBlockSize, @sizeBytes, @cbtMap)`).run(row);
  }

  /** Records what the kernel reported once the snapshot exists. */
  completeVolume(row: Pick<VolumeRow, 'snapshotId' | 'diskId' | 'imagePath' | 'imageMajor' | 'imageMinor' | 'generationId'
    | 'snapshotNumber' | 'cbtBlockSize' | 'sizeBytes' | 'cbtMap'>): void {
    this.db.prepare(`UPDATE volume_snapshots SET image_path = @imagePath, image_major = @imageMajor, image_minor = @imageMinor,
      generation_id = @generationId, snapshot_number = @snapshotNumber, cbt_block_size = @cbtBlockSize,
      size_bytes = @sizeBytes, cbt_map = @cbtMap WHERE snapshot_id = @snapshotId AND disk_id = @diskId`).run(row);
  }

  // ---- exports

  exports(): ExportRow[] {
    return this.db.prepare(`SELECT ${EXPORT_COLUMNS} FROM exports ORDER BY rowid`).all() as ExportRow[];
  }

  exportsOf(snapshotId: string): ExportRow[] {
    return this.db.prepare(`SELECT ${EXPORT_COLUMNS} FROM exports WHERE snapshot_id = ? ORDER BY rowid`).all(snapshotId) as ExportRow[];
  }

  export(name: string): ExportRow | undefined {
    return this.db.prepare(`SELECT ${EXPORT_COLUMNS} FROM exports WHERE name = ?`).get(name) as ExportRow | undefined;
  }

  insertExport(row: ExportRow): void {
    this.db.prepare('INSERT INTO exports (name, snapshot_id, disk_id, http_path) VALUES (@name, @snapshotId, @diskId, @httpPath)').run(row);
  }

  // ---- snapstores and their files

  snapstores(): SnapstoreRow[] {
    return this.db.prepare(`SELECT ${SNAPSTORE_COLUMNS} FROM snapstores ORDER BY rowid`).all() as SnapstoreRow[];
  }

  snapstore(id: string): SnapstoreRow | undefined {
    return this.db.prepare(`SELECT ${SNAPSTORE_COLUMNS} FROM snapstores WHERE id = ?`).get(id) as SnapstoreRow | undefined;
  }

  snapstoresOf(snapshotId: string): SnapstoreRow[] {
    return this.db.prepare(`SELECT ${SNAPSTORE_COLUMNS} FROM snapstores WHERE snapshot_id = ? ORDER BY rowid`).all(snapshotId) as SnapstoreRow[];
  }

  insertSnapstore(row: SnapstoreRow): void {
    this.db.prepare(`INSERT INTO snapstores (id, snapshot_id, disk_id, location, directory, storage_major, storage_minor, state, at_risk,
      filled_bytes, filled_at)
      VALUES (@id, @snapshotId, @diskId, @location, @directory, @storageMajor, @storageMinor, @state, @atRisk, @filledBytes, @filledAt)`).run(row);
  }

  setSnapstoreState(id: string, state: SnapstoreRow['state']): void {
    this.db.prepare('UPDATE snapstores SET state = ? WHERE id = ?').run(state, id);
  }

  setSnapstoreAtRisk(id: string, atRisk: string | null): void {
    this.db.prepare('UPDATE snapstores SET at_risk = ? WHERE id = ?').run(atRisk, id);
  }

  /** Records a fill report; an older or smaller one never replaces a newer (the fill only grows). */
  setSnapstoreFill(id: string, filledBytes: number, filledAt: string): void {
    this.db.prepare('UPDATE snapstores SET filled_bytes = ?, filled_at = ? WHERE id = ? AND filled_bytes <= ?').run(filledBytes, filledAt, id, filledBytes);
  }

  deleteSnapstore(id: string): void {
    this.db.prepare('DELETE FROM snapstores WHERE id = ?').run(id);
  }

  files(snapstoreId: string): SnapstoreFileRow[] {
    return this.db.prepare('SELECT path, snapstore_id AS snapstoreId, size, state FROM snapstore_files WHERE snapstore_id = ? ORDER BY rowid')
      .all(snapstoreId) as SnapstoreFileRow[];
  }

  insertFile(row: SnapstoreFileRow): void {
    this.db.prepare('INSERT INTO snapstore_files (path, snapstore_id, size, state) VALUES (@path, @snapstoreId, @size, @state)').run(row);
  }

  setFileState(path: string, state: SnapstoreFileRow['state']): void {
    this.db.prepare('UPDATE snapstore_files SET state = ? WHERE path = ?').run(state, path);
  }

  deleteFile(path: string): void {
    this.db.prepare('DELETE FROM snapstore_files WHERE path = ?').run(path);
  }

  /** Bytes of snapstore files in `location`, for the locations listing. */
  allocatedBytesIn(location: string): number {
    const row = this.db.prepare(`SELECT coalesce(sum(f.size), 0) AS total FROM snapstore_files f
      JOIN snapstores s ON s.id = f.snapstore_id WHERE s.location = ?`).get(location) as { total: number };
    return row.total;
  }

  allocatedBytesOf(snapstoreId: string): number {
    return (this.db.prepare("SELECT coalesce(sum(size), 0) AS total FROM snapstore_files WHERE snapstore_id = ? AND state = 'added'")
      .get(snapstoreId) as { total: number }).total;
  }
}
