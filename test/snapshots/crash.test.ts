// kill -9 at every step of create and delete: a restarted agent must leave nothing leaked and
// serve only snapshots whose images still hold their true content.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';

const CHILD = path.join(__dirname, 'helpers', 'crash-child.js');

function child(dir: string, args: string[], faultPoint?: string): { status: number | null; signal: string | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CHILD, dir, ...args], {
    encoding: 'utf8', timeout: 120_000, env: { ...process.env, CSA_FAULT_POINT: faultPoint ?? '' },
  });
  return { status: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

interface Leftovers {
  rows: string[];
  snapshots: Array<{ id: string; state: string; volumes: number }>;
  intact: boolean[];
  snapstoreRows: number;
  fileRows: number;
  files: string[];
  engineSnapshots: number;
  images: number;
}

function check(dir: string): Leftovers {
  const result = child(dir, ['check']);
  assert.equal(result.status, 0, result.stderr);
  return JSON.parse(result.stdout) as Leftovers;
}

function assertClean(left: Leftovers): void {
  assert.deepEqual(left, { rows: [], snapshots: [], intact: [], snapstoreRows: 0, fileRows: 0, files: [], engineSnapshots: 0, images: 0 });
}

async function scratch(): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), 'csa-crash-'));
}

describe('kill -9 during snapshot creation', () => {
  for (const point of ['create:rows', 'create:snapstore', 'space:allocated', 'create:space', 'create:snapshot']) {
    test(`at ${point}: the restart rolls the snapshot back completely`, async (t) => {
      const dir = await scratch();
      t.after(() => fsp.rm(dir, { recursive: true, force: true }));
      const killed = child(dir, ['create'], point);
      assert.equal(killed.signal, 'SIGKILL', `the child died at ${point}: ${killed.stderr}`);
      assertClean(check(dir));
      const retry = child(dir, ['create']);
      assert.equal(retry.status, 0, `the disks are free again: ${retry.stderr}`);
    });
  }

  test('at create:done: the snapshot survives and reads back its true content', async (t) => {
    const dir = await scratch();
    t.after(() => fsp.rm(dir, { recursive: true, force: true }));
    assert.equal(child(dir, ['create'], 'create:done').signal, 'SIGKILL');
    const left = check(dir);
    assert.equal(left.snapshots.length, 1);
    assert.deepEqual(left.snapshots[0].state, 'ok');
    assert.deepEqual(left.intact, [true, true]);
    assert.equal(left.engineSnapshots, 1);
    assert.equal(left.images, 2);
  });
});

describe('kill -9 during snapshot deletion', () => {
  for (const point of ['delete:marked', 'delete:destroyed', 'delete:released']) {
    test(`at ${point}: the restart finishes the deletion`, async (t) => {
      const dir = await scratch();
      t.after(() => fsp.rm(dir, { recursive: true, force: true }));
      const created = child(dir, ['create']);
      assert.equal(created.status, 0, created.stderr);
      const id = created.stdout.trim();
      assert.equal(child(dir, ['delete', id], point).signal, 'SIGKILL');
      assertClean(check(dir));
    });
  }
});

describe('kill -9 inside the engine during a two-disk create', () => {
  const CBT_BLOCK = 256 * 1024;

  function writeBlocks(file: string, blocks: number[], tag: string): void {
    const fd = fs.openSync(file, 'r+');
    try {
      for (const block of blocks) fs.writeSync(fd, Buffer.alloc(4096, `${tag}/${block}`), 0, 4096, block * CBT_BLOCK + 4096);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  interface Changes { generationId: string; snapshotNumber: number; backupType: string; ranges: Array<{ offset: number; length: number }> }
  function changes(dir: string, id: string, since: string[] = []): Changes {
    const result = child(dir, ['changes', id, ...since]);
    assert.equal(result.status, 0, result.stderr);
    return JSON.parse(result.stdout) as Changes;
  }

  for (const point of ['engine:create:ref', 'engine:create:captured']) {
    test(`at ${point}: the next snapshot works and its incremental holds every block written since the last good one`, async (t) => {
      const dir = await scratch();
      t.after(() => fsp.rm(dir, { recursive: true, force: true }));
      const first = child(dir, ['create']);
      assert.equal(first.status, 0, first.stderr);
      const good = changes(dir, first.stdout.trim());
      assert.equal(child(dir, ['delete', first.stdout.trim()]).status, 0);

      const disk0 = path.join(dir, 'disk0.img');
      writeBlocks(disk0, [20, 22, 24, 26], 'before the crash');
      assert.equal(child(dir, ['create'], point).signal, 'SIGKILL');
      assertClean(check(dir));
      writeBlocks(disk0, [40, 42, 44, 46], 'after the restart');

      const next = child(dir, ['create']);
      assert.equal(next.status, 0, `the disks can still be snapshotted: ${next.stderr}`);
      const incremental = changes(dir, next.stdout.trim(), [good.generationId, String(good.snapshotNumber)]);
      assert.equal(incremental.backupType, 'incremental');
      const blocks = incremental.ranges.flatMap((r) =>
        Array.from({ length: r.length / CBT_BLOCK }, (_, i) => r.offset / CBT_BLOCK + i));
      assert.deepEqual(blocks, [20, 22, 24, 26, 40, 42, 44, 46]);
    });
  }
});
