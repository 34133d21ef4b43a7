// ZeroExtents (merging, lookups) and isAllZero, against answers worked out by hand.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isAllZero, ZeroExtents } from '../../src/exports/zeros';

describe('ZeroExtents', () => {
  test('merges what overlaps or touches, in any order of insertion', { timeout: 10_000 }, () => {
    const zeros = new ZeroExtents();
    zeros.add(100, 10);
    zeros.add(0, 10);
    zeros.add(50, 10);
    zeros.add(10, 5);
    zeros.add(105, 20);
    zeros.add(0, 0);
    assert.deepEqual(zeros.ranges, [{ offset: 0, length: 15 }, { offset: 50, length: 10 }, { offset: 100, length: 25 }]);
    zeros.add(12, 90);
    assert.deepEqual(zeros.ranges, [{ offset: 0, length: 125 }]);
  });

  test('stateAt and covers: inside, at the edges, between and past the last range', { timeout: 10_000 }, () => {
    const zeros = new ZeroExtents();
    zeros.add(10, 10);
    zeros.add(40, 10);
    assert.deepEqual(zeros.stateAt(0), { zero: false, end: 10 });
    assert.deepEqual(zeros.stateAt(10), { zero: true, end: 20 });
    assert.deepEqual(zeros.stateAt(19), { zero: true, end: 20 });
    assert.deepEqual(zeros.stateAt(20), { zero: false, end: 40 });
    assert.deepEqual(zeros.stateAt(50), { zero: false, end: Infinity });
    assert.ok(zeros.covers(10, 10));
    assert.ok(zeros.covers(12, 3));
    assert.ok(!zeros.covers(15, 10));
    assert.ok(!zeros.covers(0, 1));
    assert.deepEqual(new ZeroExtents().stateAt(5), { zero: false, end: Infinity });
  });
});

describe('isAllZero', () => {
  test('zeros of any length, and a single other byte anywhere', { timeout: 10_000 }, () => {
    for (const length of [0, 1, 4096, 1024 * 1024, 3 * 1024 * 1024 + 7]) {
      const buffer = Buffer.alloc(length);
      assert.ok(isAllZero(buffer), `${length} zeros`);
      if (length > 0) {
        buffer[length - 1] = 1;
        assert.ok(!isAllZero(buffer), `${length}: last byte`);
        buffer[length - 1] = 0;
        buffer[Math.floor(length / 2)] = 0x80;
        assert.ok(!isAllZero(buffer), `${length}: middle byte`);
      }
    }
  });
});
