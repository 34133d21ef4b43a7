import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { DISK_SIZE, lifecycleEnv, MiB, nextEvent, pattern, writeDisk, type LifecycleEnv } from '../snapshots/helpers/env';

let env: LifecycleEnv | undefined;
afterEach(async () => {
  await env?.close();
  env = undefined;
});

test('every volume of a live snapshot is an export, with its CBT, until the snapshot is deleted', async () => {
  env = await lifecycleEnv();
  const registry = env.exports;
  const snapshot = await env.manager.createSnapshot(['disk0', 'disk1']);
  const names = [`${snapshot.id}/disk0`, `${snapshot.id}/disk1`];
  assert.deepEqual(registry.list().map((x) => x.name), names);
  const first = registry.get(names[0])!;
  assert.equal(first.httpPath, `/api/v1/snapshots/${snapshot.id}/consume/disk0`);
  assert.equal(first.sizeBytes, DISK_SIZE);
  assert.equal(first.cbt.snapshotNumber, 1);
  assert.equal(first.cbt.map.length, DISK_SIZE / first.cbt.blockSize);
  assert.equal(first.failure, null);
  const reader = await registry.open(names[1]);
  assert.ok((await reader.read(0, MiB)).equals(pattern(MiB, 2)));
  await reader.close();

  const removed: string[] = [];
  registry.on('removed', (name) => removed.push(name));
  await env.manager.deleteSnapshot(snapshot.id);
  assert.deepEqual(removed, names);
  assert.deepEqual(registry.list(), []);
  assert.equal(registry.get(names[0]), undefined);
  await assert.rejects(registry.open(names[0]), { code: 'ENOENT' });
});

test('exports come back after a restart, and a failed snapshot\'s exports refuse reads with EIO', async () => {
  env = await lifecycleEnv();
  const snapshot = await env.manager.createSnapshot(['disk0']);
  await env.restart();
  const registry = env.exports;
  const name = `${snapshot.id}/disk0`;
  assert.deepEqual(registry.list().map((x) => x.name), [name]);

  // An overflow whose failure is never announced must fail this test, not hang it.
  const failed = nextEvent(registry, 'failed', 30_000) as Promise<[string, string]>;
  writeDisk(env.disks[0].path, 0, pattern(60 * MiB, 3));
  const [failedName, reason] = await failed;
  assert.equal(failedName, name);
  assert.match(reason, /ran out of space/);
  assert.match(registry.get(name)!.failure ?? '', /ran out of space/);
  await assert.rejects(registry.open(name), { code: 'EIO' });
});
