// pull against whole agents on the simulated engine, with nothing of the server stubbed: full,
// incremental and digest-resync copies equal the disk byte for byte; zero ranges stay holes; an
// interrupted pull resumes; a corrupted local block is found and fetched again; a failed
// snapshot stops the pull.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startE2eAgent } from '../e2e/helpers';
import { readState } from '../../src/pull/state';
import { writeDisk } from '../snapshots/helpers/env';
import { allocatedBytes, MiB, pull, sameBytes } from './helpers';

test('full, then incremental, then a resync after a generation change: each copy is the disk', { timeout: 180_000 }, async (t) => {
  const e2e = await startE2eAgent({ disks: 1 });
  t.after(() => e2e.stop());
  const disk = e2e.disks[0];
  const copy = path.join(e2e.dir, 'copy.img');
  const size = fs.statSync(disk).size;

  const full = await pull(e2e);
  assert.equal(full.mode, 'full');
  assert.ok(sameBytes(copy, disk), 'the full copy is the disk');
  assert.equal(full.bytes_fetched + full.bytes_zero, size);
  assert.ok(full.bytes_zero > size / 2, `the demo disk is mostly zeros: ${full.bytes_zero} skipped`);
  assert.ok(allocatedBytes(copy) <= full.bytes_fetched + MiB, `zero ranges are holes: ${allocatedBytes(copy)} bytes allocated for ${full.bytes_fetched} fetched`);
  assert.deepEqual(await e2e.json('GET', '/snapshots/'), [], 'the pull deleted its snapshot');
  const afterFull = readState(`${copy}.pull-state.json`)!;
  assert.equal(afterFull.in_progress, null);
  assert.deepEqual([afterFull.complete?.generation_id, afterFull.complete?.snapshot_number], [full.generation_id, full.snapshot_number]);

  writeDisk(disk, 10 * MiB + 3, crypto.randomBytes(100_000));
  writeDisk(disk, 40 * MiB, crypto.randomBytes(2 * MiB));
  const incremental = await pull(e2e);
  assert.equal(incremental.mode, 'incremental');
  assert.equal(incremental.generation_id, full.generation_id);
  assert.ok(incremental.bytes_fetched >= 2 * MiB && incremental.bytes_fetched <= 3 * MiB, `only the changes travel: ${incremental.bytes_fetched}`);
  assert.equal(incremental.bytes_unchanged + incremental.bytes_fetched + incremental.bytes_zero, size);
  assert.ok(sameBytes(copy, disk), 'the incremental copy is the disk');

  // A resize starts a new CBT generation: only blocks whose digests differ travel.
  fs.truncateSync(disk, size + 8 * MiB);
  writeDisk(disk, size + MiB, crypto.randomBytes(MiB));
  writeDisk(disk, 20 * MiB, crypto.randomBytes(64 * 1024));
  const resync = await pull(e2e);
  assert.equal(resync.mode, 'resync');
  assert.notEqual(resync.generation_id, full.generation_id);
  assert.equal(resync.image_size, size + 8 * MiB);
  assert.equal(resync.bytes_fetched, 2 * MiB, 'one 1 MiB block written in the old part, one in the new');
  assert.ok(sameBytes(copy, disk), 'the resynced copy is the disk');
});

test('no state but a copy in place: a resync finds and fixes the corrupted block; a verification repairs what an incremental missed', { timeout: 180_000 }, async (t) => {
  const e2e = await startE2eAgent({ disks: 1 });
  t.after(() => e2e.stop());
  const disk = e2e.disks[0];
  const copy = path.join(e2e.dir, 'copy.img');
  await pull(e2e);

  writeDisk(copy, 7 * MiB + 5, Buffer.from('corrupted'));
  fs.rmSync(`${copy}.pull-state.json`);
  const resync = await pull(e2e);
  assert.equal(resync.mode, 'resync');
  assert.equal(resync.bytes_fetched + resync.bytes_zero, MiB, 'the corrupted block, only');
  assert.ok(sameBytes(copy, disk));

  // The CBT cannot know about a local corruption; the final verification does.
  writeDisk(copy, 30 * MiB, Buffer.from('corrupted again'));
  writeDisk(disk, 50 * MiB, crypto.randomBytes(4096));
  const incremental = await pull(e2e);
  assert.equal(incremental.mode, 'incremental');
  assert.equal(incremental.bytes_repaired, MiB);
  assert.ok(sameBytes(copy, disk));

  writeDisk(copy, 12 * MiB + 1, Buffer.from('x'));
  await assert.rejects(pull(e2e, { repair: false }), (err: Error) => {
    assert.match(err.message, /verification failed: 1 block\(s\) of 1048576 bytes differ from the agent's, the first at offset 12582912/);
    return true;
  });
  assert.deepEqual(await e2e.json('GET', '/snapshots/'), [], 'a pull that fails deletes its snapshot');
});

test('a zero range over data becomes a hole in the copy', { timeout: 120_000 }, async (t) => {
  const e2e = await startE2eAgent({ disks: 1 });
  t.after(() => e2e.stop());
  const disk = e2e.disks[0];
  const copy = path.join(e2e.dir, 'copy.img');
  writeDisk(disk, 16 * MiB, crypto.randomBytes(4 * MiB));
  await pull(e2e);
  const allocated = allocatedBytes(copy);
  writeDisk(disk, 16 * MiB, Buffer.alloc(4 * MiB));
  const incremental = await pull(e2e);
  assert.equal(incremental.bytes_fetched, 0);
  assert.equal(incremental.bytes_zero, 4 * MiB);
  assert.ok(sameBytes(copy, disk));
  // The zeroed data became a hole: its space went back to the filesystem.
  assert.ok(allocatedBytes(copy) <= allocated - 4 * MiB + 64 * 1024, `${allocatedBytes(copy)} bytes allocated, ${allocated} before`);
});

test('an interrupted pull resumes with its snapshot and fetches only what it had not written', { timeout: 180_000 }, async (t) => {
  // 8 MiB/s, so that the pull is still running when it is stopped.
  const e2e = await startE2eAgent({ disks: 1, configure: (config) => { config.limits.readBytesPerSecond = 8 * MiB; } });
  t.after(() => e2e.stop());
  const disk = e2e.disks[0];
  const copy = path.join(e2e.dir, 'copy.img');
  const stateFile = `${copy}.pull-state.json`;
  writeDisk(disk, 8 * MiB, crypto.randomBytes(40 * MiB));

  const controller = new AbortController();
  const first = pull(e2e, { signal: controller.signal });
  first.catch(() => {});
  while ((readState(stateFile)?.in_progress?.done.length ?? 0) === 0) await sleep(50);
  controller.abort();
  await assert.rejects(first, (err: Error & { kind?: string }) => err.kind === 'cancelled');
  const interrupted = readState(stateFile)!.in_progress!;
  const written = interrupted.done.reduce((sum, [start, end]) => sum + end - start, 0);
  assert.ok(written > 0 && written < 40 * MiB, `part of the copy was done: ${written}`);
  assert.equal((await e2e.json<unknown[]>('GET', '/snapshots/')).length, 1, 'the snapshot is kept for the resume');

  const resumed = await pull(e2e);
  assert.equal(resumed.resumed, true);
  assert.equal(resumed.snapshot_id, interrupted.snapshot_id);
  assert.equal(resumed.bytes_fetched + resumed.bytes_zero, fs.statSync(disk).size - written, 'what was written is not fetched again');
  assert.ok(sameBytes(copy, disk));
  assert.deepEqual(await e2e.json('GET', '/snapshots/'), []);
});

test('a pull of a failed snapshot stops with one clear error', { timeout: 120_000 }, async (t) => {
  const e2e = await startE2eAgent({ disks: 1 });
  t.after(() => e2e.stop());
  const { snapshot_id: id } = await e2e.json<{ snapshot_id: string }>('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] });
  // Far more copy-on-write than the snapstore holds: it overflows.
  writeDisk(e2e.disks[0], 4 * MiB, crypto.randomBytes(56 * MiB));
  while ((await e2e.json<{ state: string }>('GET', `/snapshots/${id}`)).state !== 'failed') await sleep(100);
  await assert.rejects(pull(e2e, { snapshot: id }), (err: Error & { kind?: string }) => {
    assert.equal(err.kind, 'conflict');
    assert.match(err.message, new RegExp(`^snapshot ${id} failed: `));
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
  assert.equal((await e2e.json<unknown[]>('GET', '/snapshots/')).length, 1, 'a snapshot it did not create is left alone');
});
