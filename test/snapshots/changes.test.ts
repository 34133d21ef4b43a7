import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { computeChanges, type ChangesQuery } from '../../src/snapshots/changes';

const B = 256 * 1024;
const GEN = '6f1c2a4e-1b7d-4e8e-9a43-0d5f3c2b1a90';

function query(map: number[], overrides: Partial<ChangesQuery> = {}): ChangesQuery {
  return {
    map: Uint8Array.from(map), blockSize: B, deviceSize: map.length * B, generationId: GEN, snapshotNumber: 3,
    previousGenerationId: GEN, previousNumber: 2, ...overrides,
  };
}

describe('changed ranges from a CBT map', () => {
  test('incremental: blocks stamped after the previous snapshot, merged into runs', () => {
    assert.deepEqual(computeChanges(query([0, 3, 3, 0, 1, 3])), {
      backupType: 'incremental',
      ranges: [{ offset: B, length: 2 * B }, { offset: 5 * B, length: B }],
    });
  });

  test('block 0 is never dropped, alone or with later blocks', () => {
    assert.deepEqual(computeChanges(query([3, 0, 3])).ranges, [{ offset: 0, length: B }, { offset: 2 * B, length: B }]);
    assert.deepEqual(computeChanges(query([3, 3, 0])).ranges, [{ offset: 0, length: 2 * B }]);
  });

  test('nothing changed gives an empty list, never a {0,0} range', () => {
    assert.deepEqual(computeChanges(query([1, 2, 0, 2])), { backupType: 'incremental', ranges: [] });
    assert.deepEqual(computeChanges(query([1, 2, 3], { previousNumber: 3 })), { backupType: 'incremental', ranges: [] });
  });

  test('the spec\'s worked example: baseline (A,1), current (A,2)', () => {
    const map = new Array<number>(40960).fill(0);
    [1, 1, 0, 2, 2, 2, 0, 0, 2, 1, 0, 2].forEach((stamp, i) => { map[i] = stamp; });
    map[40959] = 2;
    const { ranges } = computeChanges(query(map, { snapshotNumber: 2, previousNumber: 1, deviceSize: 10 * 1024 ** 3 }));
    assert.deepEqual(ranges, [
      { offset: 786432, length: 786432 },
      { offset: 2097152, length: 262144 },
      { offset: 2883584, length: 262144 },
      { offset: 10737156096, length: 262144 },
    ]);
  });

  test('a run ending in the partial last block is clamped to the device size', () => {
    const deviceSize = 2 * B + 4096;
    assert.deepEqual(computeChanges(query([0, 3, 3], { deviceSize })).ranges, [{ offset: B, length: B + 4096 }]);
  });

  test('full when there is no baseline, a baseline of 0, or another generation', () => {
    const full = { backupType: 'full', ranges: [{ offset: 0, length: 4 * B - 100 }] };
    const deviceSize = 4 * B - 100;
    assert.deepEqual(computeChanges(query([3, 3, 0, 1], { deviceSize, previousNumber: undefined, previousGenerationId: undefined })), full);
    assert.deepEqual(computeChanges(query([3, 3, 0, 1], { deviceSize, previousNumber: 0 })), full);
    assert.deepEqual(computeChanges(query([3, 3, 0, 1], { deviceSize, previousGenerationId: 'another' })), full);
  });

  test('a baseline newer than the snapshot in its own generation is refused, saying why', () => {
    assert.throws(() => computeChanges(query([3, 3, 0, 1], { previousNumber: 4 })),
      { name: 'AgentError', kind: 'invalid', message: `previousNumber 4 is newer than this snapshot, number 3 of generation ${GEN}` });
    assert.equal(computeChanges(query([3, 3, 0, 1], { previousNumber: 4, previousGenerationId: 'another' })).backupType, 'full');
  });

  test('the 255 wrap: a baseline of (old generation, 255) after the wrap is a full copy', () => {
    const changes = computeChanges(query([1, 0], { generationId: 'new-generation', snapshotNumber: 1, previousGenerationId: GEN, previousNumber: 255 }));
    assert.equal(changes.backupType, 'full');
  });

  test('stamps above the current number are ignored', () => {
    assert.deepEqual(computeChanges(query([9, 3])).ranges, [{ offset: B, length: B }]);
  });

  test('a full copy of an empty device has no ranges', () => {
    assert.deepEqual(computeChanges(query([], { previousNumber: 0, deviceSize: 0 })), { backupType: 'full', ranges: [] });
  });
});

describe('changed ranges agree with a block-by-block reference on long and random maps', () => {
  function reference(map: Uint8Array, previous: number, current: number, deviceSize: number): Array<{ offset: number; length: number }> {
    const out: Array<{ offset: number; length: number }> = [];
    for (let i = 0; i < map.length; i++) {
      if (!(map[i] > previous && map[i] <= current)) continue;
      const last = out[out.length - 1];
      const end = Math.min((i + 1) * B, deviceSize);
      if (last && last.offset + last.length === i * B) last.length = end - last.offset;
      else out.push({ offset: i * B, length: end - i * B });
    }
    return out;
  }

  function randomMap(length: number, seed: number, stamps: number[]): Uint8Array {
    const map = new Uint8Array(length);
    let x = seed;
    let i = 0;
    while (i < length) {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      // Runs from 1 block to far longer than the 4096-block stretches the fast paths skip.
      const run = 1 + (x % 3 === 0 ? x % 9000 : x % 70);
      map.fill(stamps[x % stamps.length], i, Math.min(length, i + run));
      i += run;
    }
    return map;
  }

  for (const [previous, current] of [[4, 5], [2, 5]] as const) {
    test(`stamps in (${previous}, ${current}]`, () => {
      for (let seed = 1; seed <= 20; seed++) {
        const map = randomMap(60_000 + seed, seed, [0, 1, 3, 4, 5]);
        const deviceSize = map.length * B - (seed % 3) * 4096;
        const got = computeChanges(query([], { map, deviceSize, snapshotNumber: current, previousNumber: previous }));
        assert.deepEqual(got.ranges, reference(map, previous, current, deviceSize), `seed ${seed}`);
      }
    });
  }
});
