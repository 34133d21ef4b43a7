// The state store's guarantees that the lifecycle relies on: a state change made of several
// statements is all or nothing, and the schema refuses rows that name nothing.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { openDatabase } from '../../src/db/database';
import { AgentState, type SnapstoreRow } from '../../src/db/state';

let state: AgentState;
beforeEach(() => {
  state = AgentState.open(':memory:');
});
afterEach(() => state.close());

const snapshot = (id: string) => ({ id, engineHandle: null, state: 'creating' as const, failure: null, createdAt: '2026-01-01T00:00:00.000Z' });
const snapstore = (id: string, snapshotId: string): SnapstoreRow => ({
  id, snapshotId, diskId: 'disk0', location: '/var/snapstores', directory: `/var/snapstores/${id}`,
  storageMajor: 8, storageMinor: 16, state: 'creating', atRisk: null, filledBytes: 0, filledAt: null,
});

test('a step failing inside transaction() leaves none of the steps before it', { timeout: 10_000 }, () => {
  assert.throws(() => state.transaction(() => {
    state.snapshots.insert(snapshot('1'));
    state.snapstores.insert(snapstore('a', '1'));
    // The second snapstore names a snapshot that does not exist: a FOREIGN KEY failure.
    state.snapstores.insert(snapstore('b', 'no-such-snapshot'));
  }), /FOREIGN KEY/);
  assert.deepEqual(state.snapshots.list(), []);
  assert.deepEqual(state.snapstores.list(), []);
});

test('an exception thrown by the work itself rolls back too, and the result of good work is returned', { timeout: 10_000 }, () => {
  assert.throws(() => state.transaction(() => {
    state.snapshots.insert(snapshot('1'));
    throw new TypeError('a bug in the middle of a state change');
  }), TypeError);
  assert.deepEqual(state.snapshots.list(), []);
  assert.equal(state.transaction(() => {
    state.snapshots.insert(snapshot('2'));
    return 'done';
  }), 'done');
  assert.deepEqual(state.snapshots.list().map((s) => s.id), ['2']);
});

test('a database from before the fill columns is migrated, its snapstores kept with no fill reported yet', { timeout: 10_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-db-'));
  try {
    const file = path.join(dir, 'agent.db');
    const old = AgentState.open(file);
    old.snapshots.insert(snapshot('1'));
    old.snapstores.insert(snapstore('a', '1'));
    // Back to schema 2, as an agent of that version left it.
    old.close();
    const raw = openDatabase(file);
    raw.exec(`DROP TABLE engine_records; ALTER TABLE snapstores DROP COLUMN filled_at; ALTER TABLE snapstores DROP COLUMN filled_bytes;
      PRAGMA user_version = 2`);
    raw.close();
    const reopened = AgentState.open(file);
    assert.deepEqual(reopened.snapstores.get('a'), snapstore('a', '1'));
    reopened.snapstores.setFill('a', 32768, '2026-01-01T00:01:00.000Z');
    reopened.snapstores.setFill('a', 16384, '2026-01-01T00:02:00.000Z');
    assert.deepEqual([reopened.snapstores.get('a')!.filledBytes, reopened.snapstores.get('a')!.filledAt], [32768, '2026-01-01T00:01:00.000Z'], 'a smaller fill never replaces a larger one');
    reopened.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
