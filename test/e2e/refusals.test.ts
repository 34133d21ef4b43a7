// What the agent's own rules refuse, asked over HTTPS of a whole agent on the simulated engine:
// the statuses and words come from the inventory, the snapshot manager and the export registry
// themselves, not from a stand-in (the REST tests of test/api check the HTTP edge alone).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Response } from '../api/helpers/server';
import { startE2eAgent, type E2eAgent } from './helpers';

let e2e: E2eAgent;
before(async () => {
  // disk1 is tracked but has no snapstore mapping.
  e2e = await startE2eAgent({ configure: (config) => { config.snapstoreMappings = config.snapstoreMappings.slice(0, 1); } });
});
after(() => e2e.stop());

function refused(response: Response, status: number, details: RegExp): void {
  assert.equal(response.status, status, response.body.toString());
  const body = JSON.parse(response.body.toString()) as { error: string; details: string };
  assert.match(body.details, details);
}

describe('the agent refuses, in its own words', { timeout: 120_000 }, () => {
  test('a snapshot of an unknown disk (404), of a disk without a mapping (404), a second one of a disk (409)', async () => {
    refused(await e2e.request('POST', '/snapshots', { body: { tracked_disk_ids: ['nosuch'] } }), 404, /disk nosuch is not tracked/);
    refused(await e2e.request('POST', '/snapshots', { body: { tracked_disk_ids: ['disk1'] } }), 404, /disk disk1 has no snapstore mapping/);
    const snapshot = await e2e.json<{ snapshot_id: string }>('POST', '/snapshots', { tracked_disk_ids: ['disk0'] });
    try {
      refused(await e2e.request('POST', '/snapshots', { body: { tracked_disk_ids: ['disk0'] } }), 409, new RegExp(`disk disk0 already has snapshot ${snapshot.snapshot_id}`));
    } finally {
      await e2e.json('DELETE', `/snapshots/${snapshot.snapshot_id}`);
    }
  });

  test('changes and downloads of an unknown snapshot or of a disk it does not hold are 404', async () => {
    const snapshot = await e2e.json<{ snapshot_id: string }>('POST', '/snapshots', { tracked_disk_ids: ['disk0'] });
    try {
      refused(await e2e.request('GET', '/snapshots/123/changes/disk0'), 404, /snapshot 123 not found/);
      refused(await e2e.request('GET', `/snapshots/${snapshot.snapshot_id}/changes/disk1`), 404, new RegExp(`snapshot ${snapshot.snapshot_id} has no volume of disk disk1`));
      refused(await e2e.request('GET', '/snapshots/123/consume/disk0'), 404, /snapshot 123 not found/);
      refused(await e2e.request('GET', `/snapshots/${snapshot.snapshot_id}/consume/disk1`), 404, new RegExp(`snapshot ${snapshot.snapshot_id} has no volume of disk disk1`));
    } finally {
      await e2e.json('DELETE', `/snapshots/${snapshot.snapshot_id}`);
    }
  });

  test('a mapping of an unknown disk or to an unknown location (404), a second one of a disk (409)', async () => {
    const location = (await e2e.json<Array<{ path: string }>>('GET', '/snapstorelocations'))[0].path;
    refused(await e2e.request('POST', '/snapstoremappings', { body: { tracked_disk_id: 'nosuch', snapstore_location_id: location } }), 404, /disk nosuch is not tracked/);
    refused(await e2e.request('POST', '/snapstoremappings', { body: { tracked_disk_id: 'disk1', snapstore_location_id: '/elsewhere' } }), 404,
      /snapstore location \/elsewhere is not configured/);
    const existing = (await e2e.json<Array<{ id: string; tracked_disk_id: string }>>('GET', '/snapstoremappings')).find((m) => m.tracked_disk_id === 'disk0')!;
    refused(await e2e.request('POST', '/snapstoremappings', { body: { tracked_disk_id: 'disk0', snapstore_location_id: location } }), 409,
      new RegExp(`disk disk0 already has a snapstore mapping: ${existing.id}`));
    const created = await e2e.json<{ tracked_disk_id: string; storage_location: string }>('POST', '/snapstoremappings', { tracked_disk_id: 'disk1', snapstore_location_id: `${location}/` });
    assert.deepEqual([created.tracked_disk_id, created.storage_location], ['disk1', location]);
  });
});
