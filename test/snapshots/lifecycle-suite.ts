// The snapshot lifecycle, written once for any machine: the simulated engine over files in CI,
// the veeamsnap module over virtio disks in the VM.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import type { SnapshotEngine, Snapstore } from '../../src/engine/types';
import { isAgentError } from '../../src/core/errors';
import { roundToMiB } from '../../src/storage/allocation';
import { assertNothingLeft, CHUNK, lifecycleEnv, MiB, pattern, readFile, writeDisk, type EnvOptions, type LifecycleEnv, type Machine } from './helpers/env';
import { failingCalls, withOverrides } from '../helpers/engine-overrides';

async function readImage(e: LifecycleEnv, snapshotId: string, diskId: string, offset: number, length: number): Promise<Buffer> {
  const reader = await e.exports.openByVolume(snapshotId, diskId);
  try {
    return Buffer.from(await reader.read(offset, length));
  } finally {
    await reader.close();
  }
}

function rejectsWith(kind: string, pattern: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(isAgentError(err), `expected an AgentError, got ${String(err)}`);
    assert.equal(err.kind, kind);
    assert.match(err.message, pattern);
    return true;
  };
}

/** An internal failure: the client is told to see the log, which has the cause. */
function internalFailure(cause: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(isAgentError(err, 'internal'), `expected an internal AgentError, got ${String(err)}`);
    assert.match(err.message, /^cannot create the snapshot: [\w ]+, see the agent log$/);
    assert.doesNotMatch(err.message, /\//, 'no path');
    assert.match((err.cause as Error).message, cause);
    return true;
  };
}

/** Wraps an engine so that one method fails, the way a kernel error would. */
function failing(method: Parameters<typeof failingCalls>[0], after = 0, code = 'EIO') {
  return failingCalls(method, (call) => call >= after, code);
}

/** Snapstores whose space can be given once (the initial allocation) and never grown. */
function noGrowth(engine: SnapshotEngine): SnapshotEngine {
  return withOverrides(engine, {
    createSnapstore: async (...args): Promise<Snapstore> => {
      const snapstore = await engine.createSnapstore(...args);
      const addDeviceRanges = snapstore.addDeviceRanges.bind(snapstore);
      let given = false;
      snapstore.addDeviceRanges = async (ranges) => {
        if (given) throw Object.assign(new Error('injected: no more space'), { code: 'ENOSPC' });
        given = true;
        return addDeviceRanges(ranges);
      };
      return snapstore;
    },
  });
}

/** A test that hangs (a rollback waiting for a TERMINATE that never comes...) fails instead. */
const TIMEOUT = { timeout: 120_000 };

async function waitFor(condition: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export function lifecycleSuite(name: string, makeMachine: () => Promise<Machine>, options: { skip?: string | false } = {}): void {
  describe(`snapshot lifecycle: ${name}`, { skip: options.skip ?? false }, () => {
    let env: LifecycleEnv | undefined;
    afterEach(async () => {
      await env?.close();
      env = undefined;
    }, TIMEOUT);
    const lifecycleEnvOn = async (envOptions: EnvOptions = {}): Promise<LifecycleEnv> => lifecycleEnv({ machine: await makeMachine(), ...envOptions });

    test('a two-disk snapshot gets a snapstore of 20% per disk and images with the disks\' content', TIMEOUT, async () => {
      env = await lifecycleEnvOn();
      const snapshot = await env.manager.createSnapshot(['disk0', 'disk1']);
      assert.match(snapshot.id, /^\d+$/);
      assert.deepEqual(snapshot.state, { status: 'ok' });
      assert.deepEqual(snapshot.volumes.map((v) => v.trackedDiskId), ['disk0', 'disk1']);
      for (const volume of snapshot.volumes) {
        assert.equal(volume.snapshotNumber, 1);
        assert.equal(volume.sizeBytes, env.diskSize);
        assert.equal(volume.cbtBlockSize, env.cbtBlockSize);
      }
      assert.deepEqual(snapshot.exports.map((x) => x.name), [`${snapshot.id}/disk0`, `${snapshot.id}/disk1`]);
      const stores = await env.manager.listSnapstores();
      assert.equal(stores.length, 2);
      for (const store of stores) assert.equal(store.allocatedBytes, roundToMiB(env.diskSize * 0.2));

      writeDisk(env.disks[0].path, 0, pattern(MiB, 99));
      assert.ok((await readImage(env, snapshot.id, 'disk0', 0, 4 * MiB)).equals(pattern(4 * MiB, 1)));
      assert.ok((await readImage(env, snapshot.id, 'disk1', 123, 4000)).equals(pattern(4 * MiB, 2).subarray(123, 4123)));
      assert.deepEqual(await env.manager.listSnapshots(), [await env.manager.getSnapshot(snapshot.id)]);
    });

    test('bad requests are refused before anything is created', TIMEOUT, async () => {
      env = await lifecycleEnvOn();
      await assert.rejects(env.manager.createSnapshot([]), rejectsWith('invalid', /at least one disk/));
      await assert.rejects(env.manager.createSnapshot(['disk0', 'disk0']), rejectsWith('invalid', /listed twice/));
      await assert.rejects(env.manager.createSnapshot(['sdz']), rejectsWith('not-found', /sdz is not tracked/));
      env.state.mappings.delete(env.state.mappings.ofDisk('disk1')!.id);
      await assert.rejects(env.manager.createSnapshot(['disk0', 'disk1']), rejectsWith('not-found', /disk1 has no snapstore mapping/));
      await assertNothingLeft(env);
      const first = await env.manager.createSnapshot(['disk0']);
      await assert.rejects(env.manager.createSnapshot(['disk0']), rejectsWith('conflict', new RegExp(`already has snapshot ${first.id}`)));
      await assert.rejects(env.manager.getSnapshot('12345'), rejectsWith('not-found', /snapshot 12345 not found/));
      await assert.rejects(env.manager.changes(first.id, 'disk1', {}), rejectsWith('not-found', /no volume of disk disk1/));
    });

    test('delete removes the kernel snapshot, snapstores, files and rows; deleting again is a no-op', TIMEOUT, async () => {
      env = await lifecycleEnvOn();
      const snapshot = await env.manager.createSnapshot(['disk0', 'disk1']);
      await env.manager.deleteSnapshot(snapshot.id);
      await assertNothingLeft(env);
      await env.manager.deleteSnapshot(snapshot.id);
      await env.manager.deleteSnapshot('not-a-snapshot');
    });

    test('changes: full at first, then only what was written since the previous snapshot', TIMEOUT, async () => {
      env = await lifecycleEnvOn();
      const first = await env.manager.createSnapshot(['disk0']);
      const full = await env.manager.changes(first.id, 'disk0', {});
      assert.deepEqual(full, { trackedDiskId: 'disk0', snapshotId: first.id, cbtBlockSize: env.cbtBlockSize, backupType: 'full', ranges: [{ offset: 0, length: env.diskSize }] });
      const { generationId, snapshotNumber } = first.volumes[0];
      await env.manager.deleteSnapshot(first.id);

      writeDisk(env.disks[0].path, 0, pattern(4096, 5));
      writeDisk(env.disks[0].path, 10 * MiB + 1000, pattern(300 * 1024, 6));
      const second = await env.manager.createSnapshot(['disk0']);
      const incremental = await env.manager.changes(second.id, 'disk0', { previousGenerationId: generationId, previousNumber: snapshotNumber });
      assert.equal(incremental.backupType, 'incremental');
      // Whole CBT blocks: the one under the first write, and those under 10 MiB + 1000 .. + 300 KiB.
      const blocks = (bytes: number): number => Math.ceil(bytes / env!.cbtBlockSize) * env!.cbtBlockSize;
      assert.deepEqual(incremental.ranges, [{ offset: 0, length: env.cbtBlockSize }, { offset: 10 * MiB, length: blocks(1000 + 300 * 1024) }]);
      const other = await env.manager.changes(second.id, 'disk0', { previousGenerationId: 'another', previousNumber: snapshotNumber });
      assert.equal(other.backupType, 'full');
    });

    test('a module busy with another snapshot is a conflict, and nothing is left', TIMEOUT, async () => {
      env = await lifecycleEnvOn({ wrapEngine: failing('createSnapshot', 0, 'EBUSY') });
      await assert.rejects(env.manager.createSnapshot(['disk0']), rejectsWith('conflict', /EBUSY/));
      await assertNothingLeft(env);
    });

    test('a failure in the kernel snapshot rolls everything back, snapstores and files included', TIMEOUT, async () => {
      env = await lifecycleEnvOn({ wrapEngine: failing('createSnapshot') });
      await assert.rejects(env.manager.createSnapshot(['disk0', 'disk1']), internalFailure(/injected createSnapshot failure/));
      await assertNothingLeft(env);
    });

    test('a failure after the kernel snapshot exists destroys it too', TIMEOUT, async () => {
      env = await lifecycleEnvOn({ wrapEngine: failing('readCbtMap', 1) });
      await assert.rejects(env.manager.createSnapshot(['disk0', 'disk1']), internalFailure(/injected readCbtMap failure/));
      await assertNothingLeft(env);
      await env.restart((e) => e);
      const again = await env.manager.createSnapshot(['disk0', 'disk1']);
      assert.equal(again.volumes.length, 2, 'the disks are free again');
    });

    test('a failure creating the second disk\'s snapstore undoes the first one', TIMEOUT, async () => {
      env = await lifecycleEnvOn({ wrapEngine: failing('createSnapstore', 1) });
      await assert.rejects(env.manager.createSnapshot(['disk0', 'disk1']), internalFailure(/injected createSnapstore failure/));
      await assertNothingLeft(env);
    });

    test('a snapstore file on another device than the location\'s is refused: the kernel would write to the wrong disk', TIMEOUT, async () => {
      env = await lifecycleEnvOn({ locationDevice: () => ({ major: 1, minor: 99 }) });
      await assert.rejects(env.manager.createSnapshot(['disk0']), internalFailure(/not on the location's device 1:99/));
      await assertNothingLeft(env);
    });

    test('a snapstore filling up grows by one file per HALFFILL', TIMEOUT, async () => {
      env = await lifecycleEnvOn();
      const snapshot = await env.manager.createSnapshot(['disk0']);
      const before = (await env.manager.listSnapstores())[0].allocatedBytes;
      // Less than the threshold (one CHUNK) left free: 2 MiB past the point where it is crossed.
      const crossing = before - CHUNK;
      writeDisk(env.disks[0].path, 8 * MiB, pattern(crossing + 2 * MiB, 7));
      await waitFor(async () => (await env!.manager.listSnapstores())[0].allocatedBytes === before + CHUNK);
      assert.deepEqual((await env.manager.getSnapshot(snapshot.id)).state, { status: 'ok' });
      // HALFFILL came as soon as less than the threshold was free.
      assert.ok((await env.manager.listSnapstores())[0].usedBytes > crossing);
    });

    test('an overflow fails the snapshot visibly and refuses reads', TIMEOUT, async () => {
      env = await lifecycleEnvOn({ wrapEngine: noGrowth });
      const snapshot = await env.manager.createSnapshot(['disk0']);
      // More copy-on-write than the initial space, which cannot grow.
      writeDisk(env.disks[0].path, 0, pattern(roundToMiB(env.diskSize * 0.2) + 4 * MiB, 8));
      await waitFor(async () => (await env!.manager.getSnapshot(snapshot.id)).state.status === 'failed');
      const failed = await env.manager.getSnapshot(snapshot.id);
      assert.match(failed.state.status === 'failed' ? failed.state.reason : '', /ran out of space/);
      await assert.rejects(env.exports.openByVolume(snapshot.id, 'disk0'), rejectsWith('conflict', /has failed/));
      await env.manager.deleteSnapshot(snapshot.id);
      await assertNothingLeft(env);
    });

    test('after a restart the snapshot is still served, re-watched and deletable', TIMEOUT, async () => {
      env = await lifecycleEnvOn();
      const snapshot = await env.manager.createSnapshot(['disk0', 'disk1']);
      const allocated = (await env.manager.listSnapstores()).map((s) => s.allocatedBytes);
      writeDisk(env.disks[0].path, 0, pattern(MiB, 11));
      await env.restart();
      assert.deepEqual(await env.manager.getSnapshot(snapshot.id), snapshot);
      assert.ok((await readImage(env, snapshot.id, 'disk0', 0, MiB)).equals(pattern(MiB, 1)));
      // 1 MiB of copy-on-write leaves more than the threshold free: nothing to grow.
      assert.deepEqual((await env.manager.listSnapstores()).map((s) => s.allocatedBytes), allocated);
      await env.manager.deleteSnapshot(snapshot.id);
      await assertNothingLeft(env);
      assert.ok(readFile(env.disks[0].path, 0, MiB).equals(pattern(MiB, 11)), 'the disk itself is untouched');
    });
  });

}
