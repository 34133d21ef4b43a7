// The token bucket and the per-connection budgets, on a fake clock: what is granted when.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, test } from 'node:test';
import { setImmediate as flush } from 'node:timers/promises';
import type { ImageReader } from '../../src/core/image';
import { cancelled, isAgentError } from '../../src/core/errors';
import { ReadLimits, TokenBucket } from '../../src/doors/limits';
import { FakeClock } from './fake-clock';

const KiB = 1024;
const MiB = 1024 * KiB;
const options = { timeout: 30_000 };

/** A promise's state, readable synchronously once the microtasks ran (await flush()). */
function watch(promise: Promise<unknown>): { state: 'pending' | 'granted' | 'rejected'; error?: unknown } {
  const watched: { state: 'pending' | 'granted' | 'rejected'; error?: unknown } = { state: 'pending' };
  promise.then(() => { watched.state = 'granted'; }, (error: unknown) => {
    watched.state = 'rejected';
    watched.error = error;
  });
  return watched;
}

describe('TokenBucket', () => {
  test('grants while the bucket is not in debt, then bytes at the rate', options, async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket(10 * MiB, clock);
    assert.equal(bucket.burst, MiB, 'a tenth of a second, at least 1 MiB');
    const party = {};
    const reads = [watch(bucket.take(MiB, party)), watch(bucket.take(MiB, party)), watch(bucket.take(MiB, party))];
    await flush();
    assert.deepEqual(reads.map((read) => read.state), ['granted', 'granted', 'pending'], 'the burst, then one read into debt');
    clock.advance(99);
    await flush();
    assert.equal(reads[2].state, 'pending', 'a debt of 1 MiB at 10 MiB/s takes 100 ms to pay');
    clock.advance(1);
    await flush();
    assert.equal(reads[2].state, 'granted');
  });

  test('a read larger than the burst goes through, and leaves a debt', options, async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket(MiB, clock);
    const party = {};
    const large = watch(bucket.take(32 * MiB, party));
    await flush();
    assert.equal(large.state, 'granted', 'a 32 MiB NBD read under 1 MiB/s is not refused');
    const next = watch(bucket.take(4 * KiB, party));
    clock.advance(30_999);
    await flush();
    assert.equal(next.state, 'pending', 'the debt of 31 MiB is paid first');
    clock.advance(1);
    await flush();
    assert.equal(next.state, 'granted');
  });

  test('over any stretch of time, grants never exceed the burst plus the rate', options, async () => {
    const clock = new FakeClock();
    const rate = 50 * MiB;
    const bucket = new TokenBucket(rate, clock);
    let granted = 0;
    // Four readers keep reads of assorted sizes queued (HTTP chunks, merged NBD reads).
    const sizes = [MiB, 256 * KiB, 2 * MiB, 4 * KiB, 32 * MiB];
    let stop = false;
    const reader = async (index: number): Promise<void> => {
      const party = {};
      for (let i = index; !stop; i++) {
        const bytes = sizes[i % sizes.length];
        await bucket.take(bytes, party);
        granted += bytes;
      }
    };
    const readers = [0, 1, 2, 3].map(reader);
    const checkpoints: Array<{ time: number; granted: number }> = [];
    while (clock.now() < 20_000) {
      await flush();
      clock.runNext();
      checkpoints.push({ time: clock.now(), granted });
    }
    stop = true;
    // A read is granted only out of debt, so the debt never exceeds the largest read.
    for (const { time, granted: sofar } of checkpoints) {
      assert.ok(sofar <= bucket.burst + (rate * time) / 1000 + 32 * MiB, `${sofar} bytes by ${time} ms`);
    }
    const last = checkpoints.at(-1)!;
    const ratio = last.granted / ((rate * last.time) / 1000);
    assert.ok(ratio > 0.99 && ratio < 1.01, `granted ${ratio} of the rate over 20 s`);
    clock.advance(60_000);
    await Promise.all(readers);
  });

  test('timers that fire late cost no throughput', options, async () => {
    const clock = new FakeClock();
    const rate = 8 * MiB;
    const bucket = new TokenBucket(rate, clock);
    let granted = 0;
    let stop = false;
    const reader = (async () => {
      const party = {};
      while (!stop) {
        await bucket.take(MiB, party);
        granted += MiB;
      }
    })();
    while (clock.now() < 20_000) {
      await flush();
      // 300 ms late every time: longer than the 125 ms the burst covers at this rate.
      clock.runNext(300);
    }
    const ratio = granted / ((rate * clock.now()) / 1000);
    stop = true;
    clock.advance(1000);
    await reader;
    assert.ok(ratio > 0.98, `granted ${ratio} of the rate`);
  });

  test('a party with many reads queued does not hold back one with a few', options, async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket(MiB, clock);
    const order: string[] = [];
    const many = {};
    const few = {};
    const queued: Array<Promise<void>> = [];
    for (let i = 0; i < 8; i++) queued.push(bucket.take(MiB, many).then(() => { order.push('many'); }));
    await flush();
    for (let i = 0; i < 2; i++) queued.push(bucket.take(MiB, few).then(() => { order.push('few'); }));
    while (clock.runNext()) await flush();
    await Promise.all(queued);
    // The burst granted two of the first party's reads at once; after that the parties alternate.
    assert.deepEqual(order.slice(0, 5), ['many', 'many', 'few', 'many', 'few'], `grant order ${order.join(' ')}`);
  });

  test('cancelled reads take nothing: the next party is served as if they had never asked', options, async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket(MiB, clock);
    const gone = {};
    const other = {};
    await bucket.take(2 * MiB, gone);
    const withdrawn = [watch(bucket.take(MiB, gone)), watch(bucket.take(MiB, gone))];
    const waiting = watch(bucket.take(MiB, other));
    clock.advance(500);
    const reason = cancelled('the client went away');
    bucket.cancel(gone, reason);
    await flush();
    for (const read of withdrawn) {
      assert.equal(read.state, 'rejected');
      assert.equal(read.error, reason);
    }
    clock.advance(499);
    await flush();
    assert.equal(waiting.state, 'pending');
    clock.advance(1);
    await flush();
    assert.equal(waiting.state, 'granted', 'granted 1 s after the burst, not 3 s');
    assert.equal(clock.pendingTimers, 0, 'no timer left once nobody waits');
  });
});

/** A socket as throttle() sees it. */
class FakeConnection extends EventEmitter {
  destroyed = false;
  readableEnded = false;
  close(): void {
    this.destroyed = true;
    this.emit('close');
  }
}

/** A reader that counts the reads that reached it. */
function countingReader(): ImageReader & { reads: number } {
  return {
    path: '/dev/fake',
    size: 1024 * MiB,
    logicalBlockSize: 512,
    reads: 0,
    read(_offset: number, length: number) {
      this.reads++;
      return Promise.resolve(Buffer.alloc(length));
    },
    digest() {
      this.reads++;
      return Promise.resolve({ zero: true, sha256: null });
    },
    close: () => Promise.resolve(),
  };
}

describe('ReadLimits', () => {
  test('without a limit the reader is handed back as it is', options, () => {
    const reader = countingReader();
    const limits = new ReadLimits({ readBytesPerSecond: null, connectionReadBytesPerSecond: null });
    assert.equal(limits.throttle(reader, new FakeConnection()), reader);
  });

  test('a per-connection limit applies to each connection on its own', options, async () => {
    const clock = new FakeClock();
    const limits = new ReadLimits({ readBytesPerSecond: null, connectionReadBytesPerSecond: MiB }, clock);
    const inner = countingReader();
    const one = limits.throttle(inner, new FakeConnection());
    const two = limits.throttle(inner, new FakeConnection());
    await one.read(0, 2 * MiB);
    const again = watch(one.read(0, MiB));
    const other = watch(two.read(0, MiB));
    await flush();
    assert.equal(again.state, 'pending', 'the first connection spent its burst and more');
    assert.equal(other.state, 'granted', 'the second has its own');
    assert.equal(limits.waiting, 1);
  });

  test('the agent-wide limit is one budget for every connection', options, async () => {
    const clock = new FakeClock();
    const limits = new ReadLimits({ readBytesPerSecond: MiB, connectionReadBytesPerSecond: null }, clock);
    const inner = countingReader();
    const one = limits.throttle(inner, new FakeConnection());
    const two = limits.throttle(inner, new FakeConnection());
    await one.read(0, 2 * MiB);
    const other = watch(two.read(0, MiB));
    await flush();
    assert.equal(other.state, 'pending');
    clock.advance(1000);
    await flush();
    assert.equal(other.state, 'granted');
  });

  test('a read waits for the stricter of its connection\'s limit and the agent\'s', options, async () => {
    const clock = new FakeClock();
    const limits = new ReadLimits({ readBytesPerSecond: 100 * MiB, connectionReadBytesPerSecond: 2 * MiB }, clock);
    const reader = limits.throttle(countingReader(), new FakeConnection());
    await reader.read(0, 2 * MiB);
    const next = watch(reader.read(0, 2 * MiB));
    clock.advance(499);
    await flush();
    assert.equal(next.state, 'pending', 'the connection\'s 2 MiB/s, not the agent\'s 100 MiB/s');
    clock.advance(1);
    await flush();
    assert.equal(next.state, 'granted');
  });

  test('when its connection closes, a waiting read is dropped before it reaches the disk', options, async () => {
    const clock = new FakeClock();
    const limits = new ReadLimits({ readBytesPerSecond: MiB, connectionReadBytesPerSecond: MiB }, clock);
    const inner = countingReader();
    const connection = new FakeConnection();
    const reader = limits.throttle(inner, connection);
    await reader.read(0, 2 * MiB);
    const waiting = [watch(reader.read(0, MiB)), watch(reader.read(MiB, MiB))];
    const otherReader = limits.throttle(inner, new FakeConnection());
    const other = watch(otherReader.read(0, MiB));
    connection.close();
    await flush();
    for (const read of waiting) {
      assert.equal(read.state, 'rejected');
      assert.ok(isAgentError(read.error, 'cancelled'));
    }
    await assert.rejects(reader.read(0, 512), (err) => isAgentError(err, 'cancelled'), 'and so is every later read');
    assert.equal(inner.reads, 1, 'only the read granted before the close reached the disk');
    clock.advance(999);
    await flush();
    assert.equal(other.state, 'pending');
    clock.advance(1);
    await flush();
    assert.equal(other.state, 'granted', 'the other connection was not charged for the dropped reads');
    assert.equal(limits.waiting, 0);
    assert.equal(clock.pendingTimers, 0);
  });

  test('a connection that is already gone gets no grant', options, async () => {
    const limits = new ReadLimits({ readBytesPerSecond: MiB, connectionReadBytesPerSecond: null }, new FakeClock());
    const connection = new FakeConnection();
    connection.destroyed = true;
    const inner = countingReader();
    await assert.rejects(limits.throttle(inner, connection).read(0, 512), (err) => isAgentError(err, 'cancelled'));
    assert.equal(inner.reads, 0);
  });
});
