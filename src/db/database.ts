// The agent's state in SQLite: WAL journal, foreign keys, one transaction per state change,
// schema migrations keyed by PRAGMA user_version.
import Database from 'better-sqlite3';
import fs from 'node:fs';
import path from 'node:path';

export type Db = Database.Database;

/** Each entry moves the schema one version up; never edit an entry that has shipped. */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
  );
  CREATE TABLE tracked_disks (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    major INTEGER NOT NULL,
    minor INTEGER NOT NULL,
    UNIQUE (major, minor)
  );
  CREATE TABLE mappings (
    id TEXT PRIMARY KEY,
    disk_id TEXT NOT NULL UNIQUE REFERENCES tracked_disks (id) ON DELETE CASCADE,
    location TEXT NOT NULL
  );
  CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    engine_handle TEXT,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ok', 'failed', 'deleting')),
    failure TEXT,
    created_at TEXT NOT NULL
  );
  CREATE TABLE snapstores (
    id TEXT PRIMARY KEY,
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id),
    disk_id TEXT NOT NULL,
    location TEXT NOT NULL,
    directory TEXT NOT NULL,
    storage_major INTEGER NOT NULL,
    storage_minor INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('creating', 'active', 'cleaning')),
    at_risk TEXT
  );
  CREATE TABLE snapstore_files (
    path TEXT PRIMARY KEY,
    snapstore_id TEXT NOT NULL REFERENCES snapstores (id) ON DELETE CASCADE,
    size INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('allocating', 'added'))
  );
  CREATE TABLE volume_snapshots (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    disk_id TEXT NOT NULL,
    snapstore_id TEXT NOT NULL,
    original_path TEXT NOT NULL,
    original_major INTEGER NOT NULL,
    original_minor INTEGER NOT NULL,
    image_path TEXT,
    image_major INTEGER,
    image_minor INTEGER,
    generation_id TEXT,
    snapshot_number INTEGER,
    cbt_block_size INTEGER,
    size_bytes INTEGER,
    cbt_map BLOB,
    PRIMARY KEY (snapshot_id, disk_id)
  );
  `,
  `
  CREATE TABLE exports (
    name TEXT PRIMARY KEY,
    snapshot_id TEXT NOT NULL,
    disk_id TEXT NOT NULL,
    http_path TEXT NOT NULL,
    FOREIGN KEY (snapshot_id, disk_id) REFERENCES volume_snapshots (snapshot_id, disk_id) ON DELETE CASCADE
  );
  `,
  // The last fill the engine reported, kept because veeamsnap cannot report it after a restart.
  `
  ALTER TABLE snapstores ADD COLUMN filled_bytes INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE snapstores ADD COLUMN filled_at TEXT;
  `,
  // What an engine keeps across agent restarts (veeamsnap's snapshot handles, blksnap's
  // snapshot and snapstore records): one JSON document per engine, forgotten with the boot.
  `
  CREATE TABLE engine_records (
    engine TEXT PRIMARY KEY,
    document TEXT NOT NULL
  );
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

export function openDatabase(file: string): Db {
  if (file !== ':memory:') fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const db = new Database(file);
  try {
    if (file !== ':memory:') fs.chmodSync(file, 0o600);
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    migrate(db);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

function migrate(db: Db): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new Error(`the database is at schema version ${version}, newer than this agent's ${SCHEMA_VERSION}: upgrade the agent`);
  }
  db.transaction(() => {
    for (let next = version; next < SCHEMA_VERSION; next++) {
      db.exec(MIGRATIONS[next]);
      db.pragma(`user_version = ${next + 1}`);
    }
  })();
}
