// The agent's state, as repositories over SQLite: one per kind of row, each with its statements
// prepared once and named methods, so no SQL lives outside db/. Each method is one statement;
// callers group the ones that make up a state change with `transaction`, so a crash never
// leaves half of one.
import type { Statement } from 'better-sqlite3';
import type { EngineMemory } from '../engine/types';
import { openDatabase, type Db } from './database';

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

/** A volume as written before its snapshot exists: the disk it captures and its snapstore. */
export interface PlannedVolume {
  snapshotId: string;
  diskId: string;
  snapstoreId: string;
  originalPath: string;
  originalMajor: number;
  originalMinor: number;
}

/** What the kernel reported once the snapshot exists. */
export interface Capture {
  imagePath: string;
  imageMajor: number;
  imageMinor: number;
  generationId: string;
  snapshotNumber: number;
  cbtBlockSize: number;
  sizeBytes: number;
  cbtMap: Buffer;
}

/** A volume of a snapshot that exists: every capture field is known. */
export type CapturedVolume = PlannedVolume & Capture;

/** Any volume: a captured one, or a planned one whose capture fields are all null. */
export type VolumeRow = PlannedVolume & { [K in keyof Capture]: Capture[K] | null };

export interface ExportRow {
  name: string;
  snapshotId: string;
  diskId: string;
  httpPath: string;
}

const isCaptured = (row: VolumeRow): row is CapturedVolume =>
  row.imagePath !== null && row.imageMajor !== null && row.imageMinor !== null && row.generationId !== null &&
  row.snapshotNumber !== null && row.cbtBlockSize !== null && row.sizeBytes !== null && row.cbtMap !== null;

const SNAPSHOT_COLUMNS = 'id, engine_handle AS engineHandle, state, failure, created_at AS createdAt';
const SNAPSTORE_COLUMNS = `id, snapshot_id AS snapshotId, disk_id AS diskId, location, directory,
  storage_major AS storageMajor, storage_minor AS storageMinor, state, at_risk AS atRisk,
  filled_bytes AS filledBytes, filled_at AS filledAt`;
const VOLUME_COLUMNS = `snapshot_id AS snapshotId, disk_id AS diskId, snapstore_id AS snapstoreId,
  original_path AS originalPath, original_major AS originalMajor, original_minor AS originalMinor,
  image_path AS imagePath, image_major AS imageMajor, image_minor AS imageMinor,
  generation_id AS generationId, snapshot_number AS snapshotNumber, cbt_block_size AS cbtBlockSize,
  size_bytes AS sizeBytes, cbt_map AS cbtMap`;
const EXPORT_COLUMNS = 'name, snapshot_id AS snapshotId, disk_id AS diskId, http_path AS httpPath';

/** Typed statements: `all` and `get` return rows of T. */
function rows<T>(statement: Statement): { all(...params: unknown[]): T[]; get(...params: unknown[]): T | undefined } {
  return {
    all: (...params) => statement.all(...params) as T[],
    get: (...params) => statement.get(...params) as T | undefined,
  };
}

export class MetaRepository {
  private readonly select;
  private readonly upsert;

  constructor(db: Db) {
    this.select = rows<{ value: string }>(db.prepare('SELECT value FROM meta WHERE key = ?'));
    this.upsert = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value');
  }

  get(key: string): string | undefined {
    return this.select.get(key)?.value;
  }

  set(key: string, value: string): void {
    this.upsert.run(key, value);
  }
}

export class DiskRepository {
  private readonly selectAll;
  private readonly selectOne;
  private readonly deleteRenamed;
  private readonly upsertRow;
  private readonly deleteRow;

  constructor(db: Db) {
    this.selectAll = rows<TrackedDiskRow>(db.prepare('SELECT id, path, major, minor FROM tracked_disks ORDER BY id'));
    this.selectOne = rows<TrackedDiskRow>(db.prepare('SELECT id, path, major, minor FROM tracked_disks WHERE id = ?'));
    this.deleteRenamed = db.prepare('DELETE FROM tracked_disks WHERE major = ? AND minor = ? AND id <> ?');
    this.upsertRow = db.prepare(`INSERT INTO tracked_disks (id, path, major, minor) VALUES (@id, @path, @major, @minor)
      ON CONFLICT (id) DO UPDATE SET path = excluded.path, major = excluded.major, minor = excluded.minor`);
    this.deleteRow = db.prepare('DELETE FROM tracked_disks WHERE id = ?');
  }

  list(): TrackedDiskRow[] {
    return this.selectAll.all();
  }

  get(id: string): TrackedDiskRow | undefined {
    return this.selectOne.get(id);
  }

  /** Inserts or refreshes a disk; a disk that got another kernel name keeps none of the old row. */
  upsert(row: TrackedDiskRow): void {
    this.deleteRenamed.run(row.major, row.minor, row.id);
    this.upsertRow.run(row);
  }

  delete(id: string): void {
    this.deleteRow.run(id);
  }
}

export class MappingRepository {
  private readonly selectAll;
  private readonly selectOfDisk;
  private readonly insertRow;
  private readonly deleteRow;

  constructor(db: Db) {
    this.selectAll = rows<MappingRow>(db.prepare('SELECT id, disk_id AS diskId, location FROM mappings ORDER BY disk_id'));
    this.selectOfDisk = rows<MappingRow>(db.prepare('SELECT id, disk_id AS diskId, location FROM mappings WHERE disk_id = ?'));
    this.insertRow = db.prepare('INSERT INTO mappings (id, disk_id, location) VALUES (@id, @diskId, @location)');
    this.deleteRow = db.prepare('DELETE FROM mappings WHERE id = ?');
  }

  list(): MappingRow[] {
    return this.selectAll.all();
  }

  ofDisk(diskId: string): MappingRow | undefined {
    return this.selectOfDisk.get(diskId);
  }

  insert(row: MappingRow): void {
    this.insertRow.run(row);
  }

  delete(id: string): void {
    this.deleteRow.run(id);
  }
}

export class SnapshotRepository {
  private readonly selectAll;
  private readonly selectOne;
  private readonly selectOfDisk;
  private readonly insertRow;
  private readonly updateHandle;
  private readonly updateState;
  private readonly deleteRow;

  constructor(db: Db) {
    this.selectAll = rows<SnapshotRow>(db.prepare(`SELECT ${SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created_at, id`));
    this.selectOne = rows<SnapshotRow>(db.prepare(`SELECT ${SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?`));
    this.selectOfDisk = rows<SnapshotRow>(db.prepare(`SELECT ${SNAPSHOT_COLUMNS.split(', ').map((c) => `s.${c}`).join(', ')}
      FROM snapshots s JOIN volume_snapshots v ON v.snapshot_id = s.id WHERE v.disk_id = ?`));
    this.insertRow = db.prepare(`INSERT INTO snapshots (id, engine_handle, state, failure, created_at)
      VALUES (@id, @engineHandle, @state, @failure, @createdAt)`);
    this.updateHandle = db.prepare('UPDATE snapshots SET engine_handle = ? WHERE id = ?');
    this.updateState = db.prepare('UPDATE snapshots SET state = ?, failure = coalesce(?, failure) WHERE id = ?');
    this.deleteRow = db.prepare('DELETE FROM snapshots WHERE id = ?');
  }

  list(): SnapshotRow[] {
    return this.selectAll.all();
  }

  get(id: string): SnapshotRow | undefined {
    return this.selectOne.get(id);
  }

  /** The snapshot holding `diskId`, if any. */
  ofDisk(diskId: string): SnapshotRow | undefined {
    return this.selectOfDisk.get(diskId);
  }

  insert(row: SnapshotRow): void {
    this.insertRow.run(row);
  }

  setHandle(id: string, engineHandle: string): void {
    this.updateHandle.run(engineHandle, id);
  }

  setState(id: string, state: SnapshotRowState, failure: string | null = null): void {
    this.updateState.run(state, failure, id);
  }

  /** The snapshot and, by cascade, its volumes and exports. */
  delete(id: string): void {
    this.deleteRow.run(id);
  }
}

export class VolumeRepository {
  private readonly selectOf;
  private readonly selectOne;
  private readonly insertRow;
  private readonly updateCapture;

  constructor(db: Db) {
    this.selectOf = rows<VolumeRow>(db.prepare(`SELECT ${VOLUME_COLUMNS} FROM volume_snapshots WHERE snapshot_id = ? ORDER BY rowid`));
    this.selectOne = rows<VolumeRow>(db.prepare(`SELECT ${VOLUME_COLUMNS} FROM volume_snapshots WHERE snapshot_id = ? AND disk_id = ?`));
    this.insertRow = db.prepare(`INSERT INTO volume_snapshots (snapshot_id, disk_id, snapstore_id, original_path, original_major,
      original_minor) VALUES (@snapshotId, @diskId, @snapstoreId, @originalPath, @originalMajor, @originalMinor)`);
    this.updateCapture = db.prepare(`UPDATE volume_snapshots SET image_path = @imagePath, image_major = @imageMajor,
      image_minor = @imageMinor, generation_id = @generationId, snapshot_number = @snapshotNumber,
      cbt_block_size = @cbtBlockSize, size_bytes = @sizeBytes, cbt_map = @cbtMap WHERE snapshot_id = @snapshotId AND disk_id = @diskId`);
  }

  /** Every volume of a snapshot, captured or not (what an interrupted create must undo). */
  of(snapshotId: string): VolumeRow[] {
    return this.selectOf.all(snapshotId);
  }

  /** The volumes of a snapshot that exists; empty while it is being created. */
  captured(snapshotId: string): CapturedVolume[] {
    return this.of(snapshotId).filter(isCaptured);
  }

  /** One captured volume, or undefined (no such volume, or its snapshot does not exist yet). */
  get(snapshotId: string, diskId: string): CapturedVolume | undefined {
    const row = this.selectOne.get(snapshotId, diskId);
    return row !== undefined && isCaptured(row) ? row : undefined;
  }

  insert(row: PlannedVolume): void {
    this.insertRow.run(row);
  }

  /** Records what the kernel reported once the snapshot exists. */
  recordCapture(snapshotId: string, diskId: string, capture: Capture): void {
    this.updateCapture.run({ snapshotId, diskId, ...capture });
  }
}

export class SnapstoreRepository {
  private readonly selectAll;
  private readonly selectOne;
  private readonly selectOf;
  private readonly insertRow;
  private readonly updateState;
  private readonly updateAtRisk;
  private readonly updateFill;
  private readonly deleteRow;

  constructor(db: Db) {
    this.selectAll = rows<SnapstoreRow>(db.prepare(`SELECT ${SNAPSTORE_COLUMNS} FROM snapstores ORDER BY rowid`));
    this.selectOne = rows<SnapstoreRow>(db.prepare(`SELECT ${SNAPSTORE_COLUMNS} FROM snapstores WHERE id = ?`));
    this.selectOf = rows<SnapstoreRow>(db.prepare(`SELECT ${SNAPSTORE_COLUMNS} FROM snapstores WHERE snapshot_id = ? ORDER BY rowid`));
    this.insertRow = db.prepare(`INSERT INTO snapstores (id, snapshot_id, disk_id, location, directory, storage_major, storage_minor,
      state, at_risk, filled_bytes, filled_at) VALUES (@id, @snapshotId, @diskId, @location, @directory, @storageMajor, @storageMinor,
      @state, @atRisk, @filledBytes, @filledAt)`);
    this.updateState = db.prepare('UPDATE snapstores SET state = ? WHERE id = ?');
    this.updateAtRisk = db.prepare('UPDATE snapstores SET at_risk = ? WHERE id = ?');
    this.updateFill = db.prepare('UPDATE snapstores SET filled_bytes = ?, filled_at = ? WHERE id = ? AND filled_bytes <= ?');
    this.deleteRow = db.prepare('DELETE FROM snapstores WHERE id = ?');
  }

  list(): SnapstoreRow[] {
    return this.selectAll.all();
  }

  get(id: string): SnapstoreRow | undefined {
    return this.selectOne.get(id);
  }

  of(snapshotId: string): SnapstoreRow[] {
    return this.selectOf.all(snapshotId);
  }

  insert(row: SnapstoreRow): void {
    this.insertRow.run(row);
  }

  setState(id: string, state: SnapstoreRow['state']): void {
    this.updateState.run(state, id);
  }

  setAtRisk(id: string, atRisk: string | null): void {
    this.updateAtRisk.run(atRisk, id);
  }

  /** Records a fill report; an older or smaller one never replaces a newer (the fill only grows). */
  setFill(id: string, filledBytes: number, filledAt: string): void {
    this.updateFill.run(filledBytes, filledAt, id, filledBytes);
  }

  delete(id: string): void {
    this.deleteRow.run(id);
  }
}

export class SnapstoreFileRepository {
  private readonly selectOf;
  private readonly insertRow;
  private readonly updateState;
  private readonly deleteRow;
  private readonly sumIn;
  private readonly sumAdded;

  constructor(db: Db) {
    this.selectOf = rows<SnapstoreFileRow>(db.prepare(`SELECT path, snapstore_id AS snapstoreId, size, state FROM snapstore_files
      WHERE snapstore_id = ? ORDER BY rowid`));
    this.insertRow = db.prepare('INSERT INTO snapstore_files (path, snapstore_id, size, state) VALUES (@path, @snapstoreId, @size, @state)');
    this.updateState = db.prepare('UPDATE snapstore_files SET state = ? WHERE path = ?');
    this.deleteRow = db.prepare('DELETE FROM snapstore_files WHERE path = ?');
    this.sumIn = rows<{ total: number }>(db.prepare(`SELECT coalesce(sum(f.size), 0) AS total FROM snapstore_files f
      JOIN snapstores s ON s.id = f.snapstore_id WHERE s.location = ?`));
    this.sumAdded = rows<{ total: number }>(db.prepare(`SELECT coalesce(sum(size), 0) AS total FROM snapstore_files
      WHERE snapstore_id = ? AND state = 'added'`));
  }

  of(snapstoreId: string): SnapstoreFileRow[] {
    return this.selectOf.all(snapstoreId);
  }

  insert(row: SnapstoreFileRow): void {
    this.insertRow.run(row);
  }

  setState(path: string, state: SnapstoreFileRow['state']): void {
    this.updateState.run(state, path);
  }

  delete(path: string): void {
    this.deleteRow.run(path);
  }

  /** Bytes of snapstore files in `location`, for the locations listing. */
  bytesIn(location: string): number {
    return this.sumIn.get(location)!.total;
  }

  /** Bytes the kernel was given for one snapstore. */
  bytesAddedTo(snapstoreId: string): number {
    return this.sumAdded.get(snapstoreId)!.total;
  }
}

export class ExportRepository {
  private readonly selectAll;
  private readonly selectOf;
  private readonly selectOne;
  private readonly insertRow;
  private readonly deleteOf;

  constructor(db: Db) {
    this.selectAll = rows<ExportRow>(db.prepare(`SELECT ${EXPORT_COLUMNS} FROM exports ORDER BY rowid`));
    this.selectOf = rows<ExportRow>(db.prepare(`SELECT ${EXPORT_COLUMNS} FROM exports WHERE snapshot_id = ? ORDER BY rowid`));
    this.selectOne = rows<ExportRow>(db.prepare(`SELECT ${EXPORT_COLUMNS} FROM exports WHERE name = ?`));
    this.insertRow = db.prepare('INSERT INTO exports (name, snapshot_id, disk_id, http_path) VALUES (@name, @snapshotId, @diskId, @httpPath)');
    this.deleteOf = db.prepare('DELETE FROM exports WHERE snapshot_id = ?');
  }

  list(): ExportRow[] {
    return this.selectAll.all();
  }

  of(snapshotId: string): ExportRow[] {
    return this.selectOf.all(snapshotId);
  }

  get(name: string): ExportRow | undefined {
    return this.selectOne.get(name);
  }

  insert(row: ExportRow): void {
    this.insertRow.run(row);
  }

  deleteOfSnapshot(snapshotId: string): void {
    this.deleteOf.run(snapshotId);
  }
}

/** What an engine keeps across agent restarts within one boot: one JSON document per engine. */
export class EngineRecordRepository {
  private readonly select;
  private readonly upsert;

  constructor(db: Db) {
    this.select = rows<{ document: string }>(db.prepare('SELECT document FROM engine_records WHERE engine = ?'));
    this.upsert = db.prepare(`INSERT INTO engine_records (engine, document) VALUES (?, ?)
      ON CONFLICT (engine) DO UPDATE SET document = excluded.document`);
  }

  read(engine: string): string | undefined {
    return this.select.get(engine)?.document;
  }

  write(engine: string, document: string): void {
    this.upsert.run(engine, document);
  }
}

export class AgentState {
  readonly meta: MetaRepository;
  readonly disks: DiskRepository;
  readonly mappings: MappingRepository;
  readonly snapshots: SnapshotRepository;
  readonly volumes: VolumeRepository;
  readonly snapstores: SnapstoreRepository;
  readonly files: SnapstoreFileRepository;
  readonly exports: ExportRepository;
  readonly engineRecords: EngineRecordRepository;

  private constructor(private readonly db: Db) {
    this.meta = new MetaRepository(db);
    this.disks = new DiskRepository(db);
    this.mappings = new MappingRepository(db);
    this.snapshots = new SnapshotRepository(db);
    this.volumes = new VolumeRepository(db);
    this.snapstores = new SnapstoreRepository(db);
    this.files = new SnapstoreFileRepository(db);
    this.exports = new ExportRepository(db);
    this.engineRecords = new EngineRecordRepository(db);
  }

  /** Opens (creating and migrating as needed) the database at `file`, or ':memory:'. */
  static open(file: string): AgentState {
    return new AgentState(openDatabase(file));
  }

  /** The memory of one engine (engine/types.ts EngineMemory), kept in engine_records. */
  engineMemory(engine: string): EngineMemory {
    return {
      read: () => this.engineRecords.read(engine),
      write: (document) => this.engineRecords.write(engine, document),
    };
  }

  transaction<T>(work: () => T): T {
    return this.db.transaction(work)();
  }

  /**
   * After a reboot every kernel object is gone: so are the rows that name one (snapshots,
   * volumes, exports, snapstores and their files) and what the engines remembered of them.
   * Disks, mappings and meta stay.
   */
  forgetKernelState(): void {
    this.transaction(() => {
      this.db.exec(`DELETE FROM exports; DELETE FROM snapstore_files; DELETE FROM volume_snapshots; DELETE FROM snapstores;
        DELETE FROM snapshots; DELETE FROM engine_records;`);
    });
  }

  close(): void {
    this.db.close();
  }
}
