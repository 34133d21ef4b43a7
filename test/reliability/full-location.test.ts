// A snapstore location that fills up, on a small real ext4 file system on a loop device: a
// create answers 507 naming the location (never a file in it) and leaves nothing behind; a
// live snapshot whose snapstore cannot grow is shown at risk; both recover once space is back.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { allocateFile, fsStats } from '../../src/native/blockdev';
import { findCommand, loopDevicesUnavailable, scratchFilesystem } from '../native/helpers/loop';
import { MiB, snapstoreAgent, writeDisk, type SnapstoreAgent } from './helpers/snapstore-agent';

const CHUNK = 8 * MiB;
const DISK_SIZE = 128 * MiB;

const unavailable = loopDevicesUnavailable() ?? (findCommand('mkfs.ext4') === undefined ? 'mkfs.ext4 is not installed' : undefined);

interface SnapshotJson {
  snapshot_id: string;
  state: string;
  at_risk: boolean;
  at_risk_reason?: string;
}

interface SnapstoreJson {
  allocated_disk_space: number;
  at_risk: boolean;
  at_risk_reason?: string;
}

async function waitFor(what: string, condition: () => Promise<boolean>): Promise<void> {
  for (let tries = 0; !(await condition()); tries++) {
    if (tries > 1200) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('a full snapstore location: 507 naming it, nothing left, at risk while live, all well once space is back', { skip: unavailable ?? false, timeout: 300_000 }, async (t) => {
  // No blocks reserved for root, so the agent (root here) sees the file system full when it is.
  const scratch = scratchFilesystem('ext4', 64 * MiB, { extraArgs: ['-m', '0'] });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-full-location-'));
  const location = path.join(scratch.mount.dir, 'snapstores');
  let agent: SnapstoreAgent | undefined = undefined;
  t.after(async () => {
    await agent?.stop();
    scratch.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  agent = await snapstoreAgent({ dir, location, diskSize: DISK_SIZE, snapStoreFileSize: CHUNK });
  await agent.start();
  const filler = path.join(scratch.mount.dir, 'filler');
  /** Takes the location's free space down to `left` bytes. */
  const fillUpTo = async (left: number): Promise<void> => {
    fs.rmSync(filler, { force: true });
    await allocateFile(filler, fsStats(location).availableBytes - left);
  };

  // The initial space, 20% of the disk (26 MiB), does not fit in 10 MiB.
  await fillUpTo(10 * MiB);
  const refused = await agent.request('POST', '/snapshots', { tracked_disk_ids: ['disk0'] });
  assert.equal(refused.status, 507, refused.body.toString());
  const body = JSON.parse(refused.body.toString()) as { error: string; details: string };
  assert.equal(body.error, 'Insufficient Storage');
  assert.match(body.details, new RegExp(`^snapstore location ${location} is full`));
  assert.doesNotMatch(body.details, /chunk|fallocate|No space left/, 'no internal path or errno text');
  assert.deepEqual(await agent.json('GET', '/snapshots'), []);
  assert.deepEqual(await agent.json('GET', '/snapstores'), []);
  assert.deepEqual(fs.readdirSync(location), [], 'nothing left in the location');

  // Space is back: the same create works.
  fs.rmSync(filler);
  const snapshot = await agent.json<SnapshotJson>('POST', '/snapshots', { tracked_disk_ids: ['disk0'] });
  assert.equal(snapshot.at_risk, false);
  const [{ allocated_disk_space: initial }] = await agent.json<SnapstoreJson[]>('GET', '/snapstores') as [SnapstoreJson];

  // Full again, then enough copy-on-write to cross the threshold: the growth step cannot be had.
  await fillUpTo(4 * MiB);
  writeDisk(agent.disks[0], 32 * MiB, initial - CHUNK + 2 * MiB, 2);
  await waitFor('the snapshot is at risk', async () => (await agent.json<SnapshotJson>('GET', `/snapshots/${snapshot.snapshot_id}`)).at_risk);
  const risky = await agent.json<SnapshotJson>('GET', `/snapshots/${snapshot.snapshot_id}`);
  assert.equal(risky.state, 'ok');
  assert.match(risky.at_risk_reason!, new RegExp(`^snapstore location ${location} is full`));
  const [store] = await agent.json<SnapstoreJson[]>('GET', '/snapstores');
  assert.equal(store.at_risk, true);
  assert.equal(store.at_risk_reason, risky.at_risk_reason);

  fs.rmSync(filler);
  await waitFor('the growth is retried', async () => !(await agent.json<SnapshotJson>('GET', `/snapshots/${snapshot.snapshot_id}`)).at_risk);
  const [grown] = await agent.json<SnapstoreJson[]>('GET', '/snapstores');
  assert.equal(grown.allocated_disk_space, initial + CHUNK);
  assert.equal(grown.at_risk, false);
  assert.equal((await agent.json<SnapshotJson>('GET', `/snapshots/${snapshot.snapshot_id}`)).state, 'ok');

  await agent.json('DELETE', `/snapshots/${snapshot.snapshot_id}`);
  assert.deepEqual(fs.readdirSync(location), []);
});
