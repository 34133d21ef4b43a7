// Restarting the agent N times with a live snapshot must not grow its snapstores: each restart
// used to add snap_store_file_size to every live snapstore, writes or not.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { allocatedOnDisk, MiB, snapstoreAgent, writeDisk } from './helpers/snapstore-agent';

const RESTARTS = 6;

interface SnapstoreJson {
  allocated_disk_space: number;
  used_disk_space: number;
  used_disk_space_as_of: string | null;
  at_risk: boolean;
}

test(`${RESTARTS} restarts with a live snapshot: the snapstore's allocated bytes do not change`, { timeout: 300_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-restart-growth-'));
  const location = path.join(dir, 'snapstores');
  const agent = await snapstoreAgent({ dir, location, diskSize: 64 * MiB, snapStoreFileSize: 64 * MiB });
  t.after(async () => {
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await agent.start();
  const { snapshot_id: id } = await agent.json<{ snapshot_id: string }>('POST', '/snapshots', { tracked_disk_ids: ['disk0'] });
  writeDisk(agent.disks[0], 8 * MiB, MiB, 1);
  // The first copy-on-write finds less than the threshold free (13 MiB of 64 MiB): one growth step.
  let before: SnapstoreJson | undefined;
  for (let tries = 0; ; tries++) {
    [before] = await agent.json<SnapstoreJson[]>('GET', '/snapstores');
    if (before.used_disk_space === MiB && before.allocated_disk_space - before.used_disk_space >= 64 * MiB) break;
    assert.ok(tries < 400, `the snapstore settles: ${JSON.stringify(before)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const onDisk = allocatedOnDisk(location);

  for (let restart = 1; restart <= RESTARTS; restart++) {
    await agent.stop();
    await agent.start();
    const [after] = await agent.json<SnapstoreJson[]>('GET', '/snapstores');
    assert.equal(after.allocated_disk_space, before.allocated_disk_space, `allocated after restart ${restart}`);
    assert.equal(after.used_disk_space, MiB, `used after restart ${restart}`);
    assert.equal(after.at_risk, false);
    assert.equal(allocatedOnDisk(location), onDisk, `bytes on the location's file system after restart ${restart}`);
    assert.equal((await agent.json<{ state: string }>('GET', `/snapshots/${id}`)).state, 'ok');
  }
  await agent.json('DELETE', `/snapshots/${id}`);
  assert.deepEqual(fs.readdirSync(location), []);
});
