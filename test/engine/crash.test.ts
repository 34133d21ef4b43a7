// kill -9 inside the simulated engine: the model keeps "kernel" state that outlives the agent
// process, so a crash at any step of create or destroy must leave it as the kernel would: the
// operation done or not done, never half done, and change tracking exact either way.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { SimulatedEngine } from '../../src/engine/simulated/engine';
import type { DeviceId } from '../../src/core/devices';
import { diskPaths, makeDisks, snapstoresFor, startEngine } from './helpers/model';

const CHILD = path.join(__dirname, 'helpers', 'crash-child.js');
const CBT_BLOCK = 256 * 1024;

/** Every step of a two-disk create at which the engine can die; `captured` fires after the first disk. */
const CREATE_POINTS = ['engine:create:reserved', 'engine:create:image', 'engine:create:ref', 'engine:create:captured', 'engine:create:committed'];
const DESTROY_POINTS = ['engine:destroy:committed'];

function child(dir: string, args: string[], faultPoint: string): { signal: string | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CHILD, dir, ...args], {
    encoding: 'utf8', timeout: 120_000, env: { ...process.env, CSA_FAULT_POINT: faultPoint },
  });
  return { signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

async function scratch(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-engine-crash-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  makeDisks(dir);
  return dir;
}

/** Writes 4 KiB of content no block had before into each listed CBT block. */
function writeBlocks(file: string, blocks: number[], tag: string): void {
  const fd = fs.openSync(file, 'r+');
  try {
    for (const block of blocks) fs.writeSync(fd, Buffer.alloc(4096, `${tag}/${block}`), 0, 4096, block * CBT_BLOCK + 8192);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

const devices = (engine: SimulatedEngine): DeviceId[] => engine.disks().map((d) => d.device);

/** Takes, then releases, a snapshot of both disks: the last good one, whose numbers later changes are counted from. */
async function lastGoodSnapshot(dir: string): Promise<{ generationId: string; snapshotNumber: number }> {
  const engine = await startEngine(dir);
  const stores = await snapstoresFor(engine, devices(engine));
  const snapshot = await engine.createSnapshot(devices(engine));
  const tracker = (await engine.listTrackers()).find((t) => t.device.minor === devices(engine)[0].minor)!;
  await engine.destroySnapshot(snapshot.handle);
  for (const id of stores) await engine.cleanupSnapstore(id);
  await engine.close();
  return { generationId: tracker.generationId, snapshotNumber: tracker.snapshotNumber };
}

/** Every snapshot the engine lists reads what its disks hold (nobody wrote them since). */
async function assertSurvivorsIntact(engine: SimulatedEngine): Promise<void> {
  for (const snapshot of await engine.listSnapshots()) {
    for (const image of snapshot.images) {
      const disk = engine.disks().find((d) => d.device.minor === image.original.minor)!;
      const reader = await engine.openImage(image);
      try {
        assert.ok(Buffer.from(await reader.read(0, reader.size)).equals(fs.readFileSync(disk.path)), `image ${image.image.minor} holds its disk`);
      } finally {
        await reader.close();
      }
    }
  }
}

/** Destroys what survived, as a restarted agent does with snapshots no row owns; then no image file may remain. */
async function assertNothingLeaked(dir: string, engine: SimulatedEngine): Promise<void> {
  for (const snapshot of await engine.listSnapshots()) await engine.destroySnapshot(snapshot.handle);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'engine', 'images')), [], 'no image file outlives its snapshot');
}

describe('simulated engine: kill -9 inside a two-disk snapshot create', () => {
  for (const point of CREATE_POINTS) {
    test(`at ${point}: the disks stay snapshottable and the next incremental has every changed block`, async (t) => {
      const dir = await scratch(t);
      const good = await lastGoodSnapshot(dir);
      const [disk0] = diskPaths(dir);
      writeBlocks(disk0, [1, 3, 5, 7], 'before the crash');

      const killed = child(dir, ['snapshot'], point);
      assert.equal(killed.signal, 'SIGKILL', `the child died at ${point}: ${killed.stderr}`);

      const engine = await startEngine(dir);
      t.after(() => engine.close());
      await assertSurvivorsIntact(engine);
      await assertNothingLeaked(dir, engine);
      writeBlocks(disk0, [9, 11, 13, 15], 'after the restart');
      await snapstoresFor(engine, devices(engine));
      const next = await engine.createSnapshot(devices(engine));
      await assertSurvivorsIntact(engine);

      const tracker = (await engine.listTrackers()).find((x) => x.device.minor === devices(engine)[0].minor)!;
      assert.equal(tracker.generationId, good.generationId, 'the crash did not start a new generation');
      const map = await engine.readCbtMap(devices(engine)[0]);
      const changed = [...map.keys()].filter((block) => map[block] > good.snapshotNumber);
      assert.deepEqual(changed, [1, 3, 5, 7, 9, 11, 13, 15], 'changes since the last good snapshot are exactly the written blocks');
      await engine.destroySnapshot(next.handle);
    });
  }
});

describe('simulated engine: kill -9 inside a snapshot destroy', () => {
  for (const point of DESTROY_POINTS) {
    test(`at ${point}: the snapshot is either whole or gone, and no image file is left`, async (t) => {
      const dir = await scratch(t);
      const created = child(dir, ['snapshot'], '');
      assert.equal(created.signal, null, created.stderr);
      const killed = child(dir, ['destroy', created.stdout.trim()], point);
      assert.equal(killed.signal, 'SIGKILL', `the child died at ${point}: ${killed.stderr}`);

      const engine = await startEngine(dir);
      t.after(() => engine.close());
      await assertSurvivorsIntact(engine);
      await assertNothingLeaked(dir, engine);
      await snapstoresFor(engine, devices(engine));
      await engine.destroySnapshot((await engine.createSnapshot(devices(engine))).handle);
    });
  }
});
