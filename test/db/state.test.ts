// The state store's guarantees that the lifecycle relies on: a state change made of several
// statements is all or nothing, and the schema refuses rows that name nothing.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, test } from 'node:test';
import { openDatabase } from '../../src/db/database';
import { AgentState, type SnapstoreRow } from '../../src/db/state';

let state: AgentState;
beforeEach(() => {
  state = new AgentState(openDatabase(':memory:'));
});
afterEach(() => state.db.close());

const snapshot = (id: string) => ({ id, engineHandle: null, state: 'creating' as const, failure: null, createdAt: '2026-01-01T00:00:00.000Z' });
const snapstore = (id: string, snapshotId: string): SnapstoreRow => ({
  id, snapshotId, diskId: 'disk0', location: '/var/snapstores', directory: `/var/snapstores/${id}`,
  storageMajor: 8, storageMinor: 16, state: 'creating', atRisk: null, filledBytes: 0, filledAt: null,
});

test('a step failing inside transaction() leaves none of the steps before it', { timeout: 10_000 }, () => {
  assert.throws(() => state.transaction(() => {
    state.insertSnapshot(snapshot('1'));
    state.insertSnapstore(snapstore('a', '1'));
    // The second snapstore names a snapshot that does not exist: a FOREIGN KEY failure.
    state.insertSnapstore(snapstore('b', 'no-such-snapshot'));
  }), /FOREIGN KEY/);
  assert.deepEqual(state.snapshots(), []);
  assert.deepEqual(state.snapstores(), []);
});

test('an exception thrown by the work itself rolls back too, and the result of good work is returned', { timeout: 10_000 }, () => {
  assert.throws(() => state.transaction(() => {
    state.insertSnapshot(snapshot('1'));
    throw new TypeError('a bug in the middle of a state change');
  }), TypeError);
  assert.deepEqual(state.snapshots(), []);
  assert.equal(state.transaction(() => {
    state.insertSnapshot(snapshot('2'));
    return 'done';
  }), 'done');
  assert.deepEqual(state.snapshots().map((s) => s.id), ['2']);
});
