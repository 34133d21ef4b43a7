// Snapstores on the simulated engine: their fill as the API reports it, growth that stalls and
// resumes (the "at risk" state), a failed snapshot's snapstore left alone, a full location, and
// a read that races an overflow.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import type { SimulatedEngine } from '../../src/engine/simulated/engine';
import type { SnapshotEngine, Snapstore } from '../../src/engine/types';
import { isAgentError } from '../../src/core/errors';
import type { AgentService } from '../../src/api/service';
import { roundToMiB } from '../../src/storage/allocation';
import { startServer } from '../api/helpers/server';
import { CHUNK, lifecycleEnv, MiB, nextEvent, pattern, snapstoreFiles, writeDisk, type LifecycleEnv } from './helpers/env';
import { withOverrides } from '../helpers/engine-overrides';

const TIMEOUT = { timeout: 60_000 };

async function waitFor(what: string, condition: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Snapstore space that can run out: while `full` is set, every new portion of space is refused
 * with ENOSPC, as the location's file system would. `attempts` counts the portions asked for.
 */
class Space {
  full = false;
  attempts = 0;
  inner: SimulatedEngine | undefined;

  readonly wrap = (engine: SnapshotEngine): SnapshotEngine => {
    this.inner = engine as SimulatedEngine;
    const refuse = (): void => {
      this.attempts++;
      if (this.full) throw Object.assign(new Error('injected: no space left on the location'), { code: 'ENOSPC' });
    };
    return withOverrides(engine, {
      addSnapstoreSpace: async (...args) => {
        refuse();
        return engine.addSnapstoreSpace(...args);
      },
      createSnapstore: async (...args): Promise<Snapstore> => {
        const snapstore = await engine.createSnapstore(...args);
        const add = snapstore.addDeviceRanges.bind(snapstore);
        snapstore.addDeviceRanges = async (ranges) => {
          refuse();
          return add(ranges);
        };
        return snapstore;
      },
    });
  };
}

async function store(env: LifecycleEnv, diskId = 'disk0') {
  const found = (await env.manager.listSnapstores()).find((s) => s.trackedDiskId === diskId);
  assert.ok(found, `a snapstore of ${diskId}`);
  return found;
}

/** Copy-on-write of exactly `bytes`: the region from 8 MiB on holds zeros until written. */
function overwrite(env: LifecycleEnv, from: number, bytes: number, seed: number): void {
  writeDisk(env.disks[0].path, 8 * MiB + from, pattern(bytes, seed));
}

describe('snapstores', () => {
  let env: LifecycleEnv | undefined;
  afterEach(async () => {
    await env?.close();
    env = undefined;
  }, TIMEOUT);

  test('used_disk_space is the copy-on-write the engine has seen up to the query, with its time', TIMEOUT, async () => {
    env = await lifecycleEnv();
    await env.manager.createSnapshot(['disk0']);
    const before = new Date();
    const idle = await store(env);
    assert.equal(idle.usedBytes, 0);
    assert.ok(idle.usedBytesAsOf !== null && idle.usedBytesAsOf >= before, 'measured by the query itself');
    // 4 MiB steps, each smaller than the free space a growth step keeps, so nothing overflows.
    for (let written = 4 * MiB; written <= 24 * MiB; written += 4 * MiB) {
      overwrite(env, written - 4 * MiB, 4 * MiB, 20 + written / MiB);
      const asked = new Date();
      const now = await store(env);
      assert.equal(now.usedBytes, written, `after ${written / MiB} MiB of copy-on-write`);
      assert.ok(now.usedBytesAsOf! >= asked);
      await waitFor('a growth step keeps a threshold free', async () => (await store(env!)).allocatedBytes - written >= CHUNK);
    }
  });

  test('after a restart an engine that cannot measure the fill answers the last one known, and when it was', TIMEOUT, async () => {
    env = await lifecycleEnv();
    await env.manager.createSnapshot(['disk0']);
    overwrite(env, 0, 6 * MiB, 30);
    const known = await store(env);
    assert.equal(known.usedBytes, 6 * MiB);
    // veeamsnap after a restart: the module has no fill query and the old pipe's events are lost.
    await env.restart((engine) => withOverrides(engine, { snapstoreUsage: async () => null }));
    const after = await store(env);
    assert.equal(after.usedBytes, 6 * MiB, 'not 0');
    assert.deepEqual(after.usedBytesAsOf, known.usedBytesAsOf);
  });

  test('a growth that fails puts the snapshot at risk, naming the location; it is retried and the mark goes once space is back', TIMEOUT, async () => {
    const space = new Space();
    env = await lifecycleEnv({ wrapEngine: space.wrap });
    const snapshot = await env.manager.createSnapshot(['disk0']);
    const initial = (await store(env)).allocatedBytes;
    space.full = true;
    // Past the threshold: the kernel asks for more space, which the location refuses.
    overwrite(env, 0, initial - CHUNK + 2 * MiB, 40);
    await waitFor('the snapstore is at risk', async () => (await store(env!)).atRisk !== null);
    const risky = await store(env);
    assert.match(risky.atRisk!, new RegExp(`snapstore location ${env.location} is full`));
    assert.doesNotMatch(risky.atRisk!, /\.chunk/, 'no file path');
    assert.equal((await env.manager.getSnapshot(snapshot.id)).atRisk, risky.atRisk);
    assert.deepEqual(env.manager.atRiskSnapstores(), [{
      snapstoreId: risky.id, snapshotId: snapshot.id, trackedDiskId: 'disk0', location: env.location, reason: risky.atRisk,
    }]);
    const tries = space.attempts;
    await waitFor('the growth is retried', () => space.attempts >= tries + 2);

    space.full = false;
    await waitFor('the retry succeeds', async () => (await store(env!)).allocatedBytes === initial + CHUNK);
    assert.equal((await store(env)).atRisk, null);
    assert.equal((await env.manager.getSnapshot(snapshot.id)).atRisk, null);
    assert.deepEqual(env.manager.atRiskSnapstores(), []);
    assert.deepEqual((await env.manager.getSnapshot(snapshot.id)).state, { status: 'ok' });
  });

  test('a failed snapshot\'s snapstore is no longer grown, even once space comes back', TIMEOUT, async () => {
    const space = new Space();
    env = await lifecycleEnv({ wrapEngine: space.wrap });
    const snapshot = await env.manager.createSnapshot(['disk0']);
    const initial = (await store(env)).allocatedBytes;
    space.full = true;
    overwrite(env, 0, initial - CHUNK + 2 * MiB, 50);
    await waitFor('the snapstore is at risk', async () => (await store(env!)).atRisk !== null);
    const failed = nextEvent(env.exports, 'failed');
    overwrite(env, initial - CHUNK + 2 * MiB, CHUNK, 51);
    const [, reason] = (await failed) as [string, string];
    assert.match(reason, /ran out of space/);
    assert.match(reason, /is full/, 'the stalled growth is named as the cause');
    assert.equal((await env.manager.getSnapshot(snapshot.id)).atRisk, null, 'past risk: failed');
    assert.deepEqual(env.manager.atRiskSnapstores(), []);

    space.full = false;
    const tries = space.attempts;
    const files = snapstoreFiles(env);
    // Several retry periods (100 ms in this environment) pass without a single attempt.
    await sleep(1000);
    assert.equal(space.attempts, tries, 'no growth attempt for a dead snapstore');
    // A growth already under way when the snapshot failed may still remove the file it had
    // started; nothing new may appear.
    assert.deepEqual(snapstoreFiles(env).filter((file) => !files.includes(file)), [], 'no new snapstore file');
    assert.equal((await store(env)).allocatedBytes, initial);
  });

  test('a full location refuses a create with insufficient storage naming the location, not a path; nothing is left', TIMEOUT, async () => {
    const space = new Space();
    env = await lifecycleEnv({ wrapEngine: space.wrap });
    space.full = true;
    await assert.rejects(env.manager.createSnapshot(['disk0', 'disk1']), (err: unknown) => {
      assert.ok(isAgentError(err, 'insufficient-storage'), `got ${String(err)}`);
      assert.match(err.message, new RegExp(`^snapstore location ${env!.location} is full: the snapstore of disk0 needs \\d+ more bytes$`));
      return true;
    });
    assert.deepEqual(env.state.snapshots.list(), []);
    assert.deepEqual(env.state.snapstores.list(), []);
    assert.deepEqual(snapstoreFiles(env), []);
    assert.deepEqual(await env.engine.listSnapshots(), []);
    space.full = false;
    assert.equal((await env.manager.createSnapshot(['disk0', 'disk1'])).volumes.length, 2);
  });

  describe('restarts', () => {
    test('do not grow a snapstore whose fill does not call for it', TIMEOUT, async () => {
      env = await lifecycleEnv();
      const snapshot = await env.manager.createSnapshot(['disk0']);
      overwrite(env, 0, 2 * MiB, 70);
      const allocated = (await store(env)).allocatedBytes;
      for (let restart = 1; restart <= 4; restart++) {
        await env.restart();
        const now = await store(env);
        assert.equal(now.allocatedBytes, allocated, `after restart ${restart}`);
        assert.equal(now.usedBytes, 2 * MiB, 'copy-on-write is counted once');
      }
      assert.deepEqual((await env.manager.getSnapshot(snapshot.id)).state, { status: 'ok' });
    });

    test('grow once a snapstore that ran low while the agent was down', TIMEOUT, async () => {
      env = await lifecycleEnv();
      await env.manager.createSnapshot(['disk0']);
      const initial = (await store(env)).allocatedBytes;
      const e = env;
      // Written while no agent runs: the HALFFILL it causes reaches nobody.
      await env.restart((engine) => {
        overwrite(e, 0, initial - CHUNK + 2 * MiB, 71);
        return engine;
      });
      assert.equal((await store(env)).allocatedBytes, initial + CHUNK);
      await env.restart();
      assert.equal((await store(env)).allocatedBytes, initial + CHUNK, 'and only once');
    });

    test('leave a snapstore without its event stream still growing as it fills', TIMEOUT, async () => {
      env = await lifecycleEnv();
      const snapshot = await env.manager.createSnapshot(['disk0']);
      const initial = (await store(env)).allocatedBytes;
      await env.restart();
      overwrite(env, 0, initial - CHUNK + 2 * MiB, 72);
      await waitFor('the watcher grows it', async () => (await store(env!)).allocatedBytes === initial + CHUNK);
      overwrite(env, initial - CHUNK + 2 * MiB, CHUNK, 73);
      await waitFor('and again', async () => (await store(env!)).allocatedBytes === initial + 2 * CHUNK);
      assert.deepEqual((await env.manager.getSnapshot(snapshot.id)).state, { status: 'ok' });
    });
  });

  describe('a read racing an overflow', () => {
    /** Opens a reader while the snapshot is fine, then overflows its snapstore before the first read. */
    async function overflowAfterOpen(e: LifecycleEnv, space: Space, snapshotId: string) {
      const reader = await e.exports.openByVolume(snapshotId, 'disk0');
      space.full = true;
      overwrite(e, 0, roundToMiB(e.diskSize * 0.2) + 4 * MiB, 60);
      // The engine notices the overflow now, between the open and the read (a scan already under
      // way may have looked before the write: the second one has not).
      await space.inner!.scan();
      await space.inner!.scan();
      return reader;
    }

    test('the read fails as the same conflict as every later open', TIMEOUT, async () => {
      const space = new Space();
      env = await lifecycleEnv({ wrapEngine: space.wrap });
      const snapshot = await env.manager.createSnapshot(['disk0']);
      const reader = await overflowAfterOpen(env, space, snapshot.id);
      const conflict = (err: unknown): boolean => {
        assert.ok(isAgentError(err, 'conflict'), `got ${String(err)}`);
        assert.match(err.message, new RegExp(`snapshot ${snapshot.id} has failed: .*ran out of space`));
        return true;
      };
      await assert.rejects(reader.read(0, MiB), conflict);
      await reader.close();
      await assert.rejects(env.exports.openByVolume(snapshot.id, 'disk0'), conflict);
    });

    test('a download that started just before answers 409, not 500', TIMEOUT, async () => {
      const space = new Space();
      env = await lifecycleEnv({ wrapEngine: space.wrap });
      const e = env;
      const snapshot = await e.manager.createSnapshot(['disk0']);
      const service = {
        openImage: async (snapshotId: string) => overflowAfterOpen(e, space, snapshotId),
      } as Partial<AgentService> as AgentService;
      const server = await startServer({ service });
      try {
        const res = await server.request(`/api/v1/snapshots/${snapshot.id}/consume/disk0`);
        assert.equal(res.status, 409, res.body.toString());
        const body = JSON.parse(res.body.toString()) as { error: string; details: string };
        assert.equal(body.error, 'Conflict');
        assert.match(body.details, /has failed: .*ran out of space/);
      } finally {
        await server.close();
      }
    });
  });
});
