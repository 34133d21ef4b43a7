// A rollback that fails itself: the create still answers its own error, the lifecycle is not
// held (later creates and deletes on those disks answer, stop returns as SIGTERM needs), and
// what the rollback left is finished before the next operation.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import type { SnapshotEngine } from '../../src/engine/types';
import { isAgentError } from '../../src/core/errors';
import { injectFault } from '../../src/core/faults';
import { assertNothingLeft, lifecycleEnv, type LifecycleEnv } from './helpers/env';
import { failingCalls } from '../helpers/engine-overrides';

const TIMEOUT = { timeout: 60_000 };

/** An engine whose `method` fails on the calls numbered in `failing` (0 = the first call). */
function failingOn(method: Parameters<typeof failingCalls>[0], failing: number[]) {
  return failingCalls(method, (call) => failing.includes(call));
}

/** Applies several engine wrappers, the first innermost. */
function chain(...wraps: Array<(engine: SnapshotEngine) => SnapshotEngine>) {
  return (engine: SnapshotEngine): SnapshotEngine => wraps.reduce((inner, wrap) => wrap(inner), engine);
}

describe('a rollback that fails', () => {
  let env: LifecycleEnv | undefined;
  afterEach(async () => {
    await env?.close();
    env = undefined;
  }, TIMEOUT);

  const cases: Array<{ name: string; wrap?: (engine: SnapshotEngine) => SnapshotEngine; inject?: [string, Error] }> = [
    { name: 'the kernel refuses to destroy the snapshot', wrap: failingOn('destroySnapshot', [0]) },
    { name: 'a bug (TypeError) after the kernel snapshot is destroyed', inject: ['delete:destroyed', new TypeError("Cannot read properties of undefined (reading 'id')")] },
    { name: 'a database error (FOREIGN KEY) after a snapstore is released', inject: ['delete:released', Object.assign(new Error('FOREIGN KEY constraint failed'), { code: 'SQLITE_CONSTRAINT_FOREIGNKEY' })] },
  ];
  for (const { name, wrap, inject } of cases) {
    test(`${name}: the create answers its own error and the lifecycle goes on`, TIMEOUT, async () => {
      env = await lifecycleEnv({ wrapEngine: chain(failingOn('readCbtMap', [1]), wrap ?? ((e) => e)) });
      if (inject !== undefined) injectFault(...inject);
      await assert.rejects(env.manager.createSnapshot(['disk0', 'disk1']), (err: unknown) => {
        assert.ok(isAgentError(err, 'internal'), `got ${String(err)}`);
        assert.match((err.cause as Error).message, /injected readCbtMap failure/);
        return true;
      });
      // The same disks: the leftovers are finished first, then the create goes through.
      const again = await env.manager.createSnapshot(['disk0', 'disk1']);
      assert.deepEqual(env.state.snapshots.list().map((s) => s.id), [again.id]);
      await env.manager.deleteSnapshot(again.id);
      await assertNothingLeft(env);
      // What SIGTERM runs: it returns, nothing is held.
      await env.manager.stop();
      await env.manager.start();
    });
  }

  test('a rollback that keeps failing leaves its disks answering 409, and deletes still answer', TIMEOUT, async () => {
    env = await lifecycleEnv({ wrapEngine: chain(failingOn('readCbtMap', [0]), failingOn('destroySnapshot', [0, 1, 2])) });
    await assert.rejects(env.manager.createSnapshot(['disk0']), (err: unknown) => isAgentError(err, 'internal'));
    const [left] = env.state.snapshots.list();
    assert.ok(left, 'the rollback left its row');
    await assert.rejects(env.manager.createSnapshot(['disk0']), (err: unknown) => isAgentError(err, 'conflict'));
    // The kernel destroys it this time: the delete finishes what the rollback left.
    await env.manager.deleteSnapshot(left.id);
    await assertNothingLeft(env);
    assert.equal((await env.manager.createSnapshot(['disk0'])).volumes.length, 1);
  });
});
