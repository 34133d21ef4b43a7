// The veeamsnap snapstore's cleanup, with a stand-in pipe and control device: a delete waits for
// the module's TERMINATE, but never forever.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { VeeamsnapSnapstore } from '../../src/engine/veeamsnap';
import type { SnapstorePipe } from '../../src/native/snapstore-pipe';

class FakePipe extends EventEmitter {
  closed = 0;
  async close(): Promise<void> {
    this.closed++;
  }
}

function snapstore(cleanupResult: bigint | null, terminateWaitMs = 10_000): { snapstore: VeeamsnapSnapstore; pipe: FakePipe } {
  const pipe = new FakePipe();
  const control = {
    snapstoreCleanup: async () => cleanupResult,
  };
  const created = new VeeamsnapSnapstore('00'.repeat(16), pipe as unknown as SnapstorePipe, control, terminateWaitMs);
  created.on('error', () => {});
  return { snapstore: created, pipe };
}

describe('veeamsnap snapstore cleanup', () => {
  it('resolves with what TERMINATE reports, and closes the pipe', async () => {
    const { snapstore: store, pipe } = snapstore(4096n);
    const events: unknown[] = [];
    store.on('event', (event) => events.push(event));
    const cleaned = store.cleanup();
    await new Promise((resolve) => setImmediate(resolve));
    pipe.emit('terminate', { type: 'terminate', filledBytes: 8192n });
    assert.deepEqual(await cleaned, { type: 'terminate', filledBytes: 8192 });
    assert.deepEqual(events, [{ type: 'terminate', filledBytes: 8192 }]);
    assert.ok(pipe.closed >= 1);
  });

  it('gives up on a TERMINATE that never comes, with the fill the cleanup reported', async () => {
    const { snapstore: store, pipe } = snapstore(4096n, 50);
    const started = Date.now();
    assert.deepEqual(await store.cleanup(), { filledBytes: 4096 });
    assert.ok(Date.now() - started >= 45, 'it waited for the notification first');
    assert.ok(pipe.closed >= 1);
  });

  it('does not wait for a pipe that failed', async () => {
    const { snapstore: store, pipe } = snapstore(4096n);
    const cleaned = store.cleanup();
    await new Promise((resolve) => setImmediate(resolve));
    pipe.emit('error', new Error('the snapstore pipe reader failed'));
    assert.deepEqual(await cleaned, { filledBytes: 4096 });
    assert.ok(pipe.closed >= 1);
  });

  it('a snapstore the kernel no longer knows is cleaned up at once', async () => {
    const { snapstore: store, pipe } = snapstore(null);
    assert.deepEqual(await store.cleanup(), { filledBytes: 0 });
    assert.equal(pipe.closed, 1);
  });
});

describe('veeamsnap snapstore fill', () => {
  it('is what the last event reported, with its time: the module has no fill query', { timeout: 10_000 }, () => {
    const { snapstore: store, pipe } = snapstore(0n);
    const created = store.usage;
    assert.equal(created.filledBytes, 0, 'a new snapstore holds nothing');
    pipe.emit('halffill', { type: 'halffill', filledBytes: 5n * 1024n * 1024n });
    const reported = store.usage;
    assert.equal(reported.filledBytes, 5 * 1024 * 1024);
    assert.ok(reported.measuredAt >= created.measuredAt);
    pipe.emit('overflow', { type: 'overflow', errno: -22, filledBytes: 7n * 1024n * 1024n });
    assert.equal(store.usage.filledBytes, 7 * 1024 * 1024);
  });
});
