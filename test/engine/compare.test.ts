import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spansThatMayDiffer } from '../../src/engine/simulated/compare';

const extent = (logical: number, physical: number | null, length: number) => ({ logical, physical, length });

test('holes in both files and extents at the same physical address need no reading', () => {
  const a = [extent(0, 1000, 100), extent(300, 5000, 100)];
  const b = [extent(0, 1000, 100), extent(300, 9000, 50), extent(350, 5050, 50)];
  // [0,100) shared, [100,300) holes in both, [300,350) moved, [350,400) shared again.
  assert.deepEqual(spansThatMayDiffer(a, b, 1000), [[300, 350]]);
});

test('data against a hole, a partly shared extent and unknown locations are read', () => {
  const a = [extent(0, 1000, 200)];
  const b = [extent(100, 1100, 50)];
  assert.deepEqual(spansThatMayDiffer(a, b, 400), [[0, 100], [150, 200]]);
  assert.deepEqual(spansThatMayDiffer([extent(0, null, 64)], [extent(0, null, 64)], 64), [[0, 64]]);
});

test('spans stop at the size, and adjacent ones are merged', () => {
  const a = [extent(0, 0, 50), extent(50, 500, 50)];
  assert.deepEqual(spansThatMayDiffer(a, [], 80), [[0, 80]]);
  assert.deepEqual(spansThatMayDiffer([], [], 80), []);
});
