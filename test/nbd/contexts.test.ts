// Metadata contexts: which names an export offers, how queries list and select them, and the
// extents they report, against CBT maps whose answer is known.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Export } from '../../src/exports/types';
import { ZeroExtents } from '../../src/exports/zeros';
import { contextExtents, exportContexts, listContexts, selectContexts, type MetaContext } from '../../src/nbd/contexts';
import { computeChanges } from '../../src/snapshots/changes';

function exportWith(cbt: Export['cbt'], sizeBytes: number): Export {
  return {
    name: '5/vda', snapshotId: '5', trackedDiskId: 'vda', httpPath: '/x', description: '', sizeBytes, cbt, failure: null,
    knownZeros: new ZeroExtents(),
  };
}

const BLOCK = 1024;
// Snapshot 4; stamps per block: 0 1 2 3 4 4 0 2 3 and the export ends halfway into block 8.
const exported = exportWith({ generationId: 'g', snapshotNumber: 4, blockSize: BLOCK, map: Buffer.from([0, 1, 2, 3, 4, 4, 0, 2, 3]) },
  8 * BLOCK + 512);
const since = (p: number): MetaContext => ({ name: `qemu:dirty-bitmap:since-${p}`, kind: 'dirty', sinceSnapshot: p });
const names = (contexts: MetaContext[]): string[] => contexts.map((context) => context.name);

describe('NBD metadata contexts', () => {
  it('offers base:allocation and one bitmap per earlier snapshot of the generation', () => {
    assert.deepEqual(names(exportContexts(exported)),
      ['base:allocation', 'qemu:dirty-bitmap:since-1', 'qemu:dirty-bitmap:since-2', 'qemu:dirty-bitmap:since-3']);
    const first = exportWith({ ...exported.cbt, snapshotNumber: 1 }, exported.sizeBytes);
    assert.deepEqual(names(exportContexts(first)), ['base:allocation']);
  });

  it('lists everything for no query, and by namespace or exact name otherwise', () => {
    assert.equal(listContexts(exported, []).length, 4);
    assert.deepEqual(names(listContexts(exported, ['base:'])), ['base:allocation']);
    assert.deepEqual(names(listContexts(exported, ['qemu:dirty-bitmap:'])), names(exportContexts(exported)).slice(1));
    assert.deepEqual(names(listContexts(exported, ['qemu:'])), names(exportContexts(exported)).slice(1));
    assert.deepEqual(names(listContexts(exported, ['qemu:dirty-bitmap:since-2', 'base:allocation'])),
      ['base:allocation', 'qemu:dirty-bitmap:since-2']);
    assert.deepEqual(listContexts(exported, ['x-other:', 'base:nothing', 'qemu:dirty-bitmap:since-4', 'qemu:dirty-bitmap:since-0']), []);
  });

  it('selects exact names only, once each', () => {
    assert.deepEqual(names(selectContexts(exported, ['base:', 'qemu:', 'qemu:dirty-bitmap:'])), []);
    assert.deepEqual(names(selectContexts(exported, ['qemu:dirty-bitmap:since-3', 'base:allocation', 'base:allocation'])),
      ['base:allocation', 'qemu:dirty-bitmap:since-3']);
  });

  it('reports all data as allocated, exactly over the request', () => {
    assert.deepEqual(contextExtents({ name: 'base:allocation', kind: 'allocation' }, exported, 100, 5000), [{ length: 5000, flags: 0 }]);
  });

  it('reports NBD_STATE_ZERO exactly where the export is known to be zero, within the request and maxExtents', () => {
    const zeroed = exportWith(exported.cbt, exported.sizeBytes);
    zeroed.knownZeros.add(BLOCK, 2 * BLOCK);
    zeroed.knownZeros.add(6 * BLOCK, 2 * BLOCK + 512);
    const allocation: MetaContext = { name: 'base:allocation', kind: 'allocation' };
    assert.deepEqual(contextExtents(allocation, zeroed, 0, zeroed.sizeBytes), [
      { length: BLOCK, flags: 0 }, { length: 2 * BLOCK, flags: 2 }, { length: 3 * BLOCK, flags: 0 }, { length: 2 * BLOCK + 512, flags: 2 },
    ]);
    assert.deepEqual(contextExtents(allocation, zeroed, BLOCK + 100, 200), [{ length: 200, flags: 2 }]);
    assert.deepEqual(contextExtents(allocation, zeroed, 2 * BLOCK, 2 * BLOCK), [{ length: BLOCK, flags: 2 }, { length: BLOCK, flags: 0 }]);
    assert.deepEqual(contextExtents(allocation, zeroed, 0, zeroed.sizeBytes, 1), [{ length: BLOCK, flags: 0 }]);
  });

  it('marks the blocks whose stamp is after p and at most the export snapshot as dirty', () => {
    // since-1: dirty stamps 2..4 -> blocks 2 3 4 5 7 8.
    assert.deepEqual(contextExtents(since(1), exported, 0, exported.sizeBytes), [
      { length: 2 * BLOCK, flags: 0 }, { length: 4 * BLOCK, flags: 1 }, { length: BLOCK, flags: 0 }, { length: BLOCK + 512, flags: 1 },
    ]);
    // since-3: dirty stamp 4 -> blocks 4 5.
    assert.deepEqual(contextExtents(since(3), exported, 0, exported.sizeBytes), [
      { length: 4 * BLOCK, flags: 0 }, { length: 2 * BLOCK, flags: 1 }, { length: 2 * BLOCK + 512, flags: 0 },
    ]);
  });

  it('starts and ends extents at the request, inside blocks if need be', () => {
    assert.deepEqual(contextExtents(since(3), exported, 4 * BLOCK - 10, 30), [{ length: 10, flags: 0 }, { length: 20, flags: 1 }]);
    assert.deepEqual(contextExtents(since(3), exported, 4 * BLOCK + 1, 10), [{ length: 10, flags: 1 }]);
  });

  it('gives at most the number of extents asked for, none longer than the request', () => {
    assert.deepEqual(contextExtents(since(1), exported, 0, exported.sizeBytes, 1), [{ length: 2 * BLOCK, flags: 0 }]);
    assert.deepEqual(contextExtents(since(1), exported, 2 * BLOCK, BLOCK, 1), [{ length: BLOCK, flags: 1 }]);
  });

  it('counts blocks the map does not cover as dirty', () => {
    const short = exportWith({ generationId: 'g', snapshotNumber: 2, blockSize: BLOCK, map: Buffer.from([0]) }, 3 * BLOCK);
    assert.deepEqual(contextExtents(since(1), short, 0, 3 * BLOCK), [{ length: BLOCK, flags: 0 }, { length: 2 * BLOCK, flags: 1 }]);
  });

  it('answers a 4 GiB query over a 64 KiB-block map quickly', () => {
    const size = 2 ** 32 - 65536;
    const map = Buffer.alloc(size / 65536);
    for (let i = 0; i < map.length; i += 2) map[i] = 2;
    const big = exportWith({ generationId: 'g', snapshotNumber: 2, blockSize: 65536, map }, size);
    const started = performance.now();
    const extents = contextExtents(since(1), big, 0, size);
    assert.equal(extents.length, map.length);
    assert.equal(extents.reduce((sum, e) => sum + e.length, 0), size);
    assert.ok(performance.now() - started < 500);
  });
});

describe('the dirty bitmaps and REST changes give one answer', () => {
  /** Dirty extents of a whole export as merged [offset, length) runs. */
  function dirtyRuns(of: Export, sinceSnapshot: number): Array<{ offset: number; length: number }> {
    const runs: Array<{ offset: number; length: number }> = [];
    let offset = 0;
    while (offset < of.sizeBytes) {
      for (const extent of contextExtents(since(sinceSnapshot), of, offset, of.sizeBytes - offset)) {
        const last = runs[runs.length - 1];
        if (extent.flags !== 0 && last !== undefined && last.offset + last.length === offset) last.length += extent.length;
        else if (extent.flags !== 0) runs.push({ offset, length: extent.length });
        offset += extent.length;
      }
    }
    return runs;
  }

  const changes = (of: Export, previousNumber: number): Array<{ offset: number; length: number }> => computeChanges({
    map: of.cbt.map, blockSize: of.cbt.blockSize, deviceSize: of.sizeBytes, generationId: of.cbt.generationId,
    snapshotNumber: of.cbt.snapshotNumber, previousGenerationId: of.cbt.generationId, previousNumber,
  }).ranges;

  it('on the same map, for every earlier snapshot', () => {
    for (let p = 1; p < exported.cbt.snapshotNumber; p++) assert.deepEqual(dirtyRuns(exported, p), changes(exported, p), `since ${p}`);
  });

  it('on a disk that grew past its map: the blocks the map does not cover are changed in both', () => {
    // Stamps for 4 blocks; the disk has 6.5: blocks 4 to 6 were never tracked.
    const grown = exportWith({ generationId: 'g', snapshotNumber: 3, blockSize: BLOCK, map: Buffer.from([0, 3, 0, 0]) }, 6 * BLOCK + 512);
    const expected = [{ offset: BLOCK, length: BLOCK }, { offset: 4 * BLOCK, length: 2 * BLOCK + 512 }];
    assert.deepEqual(changes(grown, 2), expected);
    assert.deepEqual(dirtyRuns(grown, 2), expected);
    // The last covered block changed: one run from it to the end of the disk.
    const lastChanged = exportWith({ ...grown.cbt, map: Buffer.from([0, 0, 0, 3]) }, 6 * BLOCK + 512);
    assert.deepEqual(changes(lastChanged, 2), [{ offset: 3 * BLOCK, length: 3 * BLOCK + 512 }]);
    assert.deepEqual(dirtyRuns(lastChanged, 2), changes(lastChanged, 2));
  });
});
