// GET /health over the real API with a fake service: what makes the agent ok, degraded or
// failing, and that a failed probe's raw text (paths, errno messages) stays in the log.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { HealthProbes } from '../../src/api/health';
import { VERSION } from '../../src/core/version';
import { startE2eAgent } from '../e2e/helpers';
import { FakeAgentService } from './helpers/fake-service';
import { json, randomFile, startServer, tempDir, type TestServer } from './helpers/server';
import type { HealthJson } from '../../src/api/health';

const MiB = 1024 * 1024;
let dir: string;
let service: FakeAgentService;
let server: TestServer;
/** What the probes do in the current test; each test sets what it needs. */
let engine: () => Promise<string>;
let database: () => void;

const probes: HealthProbes = {
  engine: () => engine(),
  database: () => database(),
  growthStepBytes: 2048 * MiB,
  timeoutMs: 200,
};

before(async () => {
  dir = tempDir('csa-api-health-');
  const vda = randomFile(dir, 'vda.img', MiB);
  service = new FakeAgentService([
    { name: 'vda', file: vda.file, size: MiB, tracked: true, mapped: true },
    { name: 'vdb', file: vda.file, size: MiB, tracked: true, mapped: true },
  ]);
  server = await startServer({ service, health: probes });
});

after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  engine = async () => 'veeamsnap';
  database = () => undefined;
  service.snapshots.clear();
  service.atRisk.clear();
  service.locations[0].availableBytes = 39791616000;
});

async function health(expectedStatus: number): Promise<HealthJson> {
  const response = await server.request('/api/v1/health/');
  assert.equal(response.status, expectedStatus, response.body.toString());
  assert.match(String(response.headers['content-type']), /^application\/json/);
  assert.equal(response.headers['cache-control'], 'no-store');
  return json(response) as HealthJson;
}

describe('health', () => {
  test('ok: engine and database answer, locations have room, no snapshot in trouble', async () => {
    await service.createSnapshot(['vda']);
    assert.deepEqual(await health(200), {
      status: 'ok',
      problems: [],
      agent_version: VERSION,
      engine: { status: 'ok', kind: 'veeamsnap' },
      database: { status: 'ok' },
      snapstore_locations: [{ path: '/mnt/snapstores/snapstore_files', available_capacity: 39791616000, total_capacity: 42006183936, status: 'ok' }],
      failed_snapshots: [],
      at_risk_snapstores: [],
    });
  });

  test('degraded (200): a failed snapshot, an at-risk snapstore, a location below one growth step', async () => {
    const failed = (await service.createSnapshot(['vda'])).id;
    service.failSnapshot(failed, 'the snapstore of vda ran out of space after 16384 bytes');
    await service.createSnapshot(['vdb']);
    service.atRisk.set('vdb', 'cannot grow the snapstore of vdb: location full');
    service.locations[0].availableBytes = 1000 * MiB;
    const body = await health(200);
    assert.equal(body.status, 'degraded');
    assert.deepEqual(body.failed_snapshots, [{ snapshot_id: failed, reason: 'the snapstore of vda ran out of space after 16384 bytes' }]);
    assert.deepEqual(body.at_risk_snapstores, [{ id: 'store-vdb', tracked_disk_id: 'vdb', reason: 'cannot grow the snapstore of vdb: location full' }]);
    assert.equal(body.snapstore_locations[0].status, 'low');
    assert.deepEqual(body.problems, [
      `snapshot ${failed} failed: the snapstore of vda ran out of space after 16384 bytes`,
      'the snapstore of disk vdb is at risk: cannot grow the snapstore of vdb: location full',
      `snapstore location /mnt/snapstores/snapstore_files has ${1000 * MiB} bytes free, less than one growth step of ${2048 * MiB}`,
    ]);
  });

  test('failing (503): the engine does not answer; its raw error stays in the log', async () => {
    engine = () => Promise.reject(Object.assign(new Error('ENOENT: no such file or directory, open \'/dev/veeamsnap\''), { code: 'ENOENT' }));
    const body = await health(503);
    assert.equal(body.status, 'failing');
    assert.deepEqual(body.engine, { status: 'failing', details: 'the engine query failed: ENOENT' });
    assert.deepEqual(body.problems, ['the engine query failed: ENOENT']);
    assert.doesNotMatch(JSON.stringify(body), /\/dev\/veeamsnap/);
  });

  test('failing (503): the database cannot be written', async () => {
    database = () => {
      throw Object.assign(new Error('attempt to write a readonly database'), { code: 'SQLITE_READONLY' });
    };
    const body = await health(503);
    assert.deepEqual(body.database, { status: 'failing', details: 'the database write failed: SQLITE_READONLY' });
    assert.equal(body.engine.status, 'ok');
  });

  test('a probe that never answers counts as failed, and health still answers', async () => {
    engine = () => new Promise<string>(() => undefined);
    const body = await health(503);
    assert.deepEqual(body.engine, { status: 'failing', details: 'the engine query failed: no answer within 200 ms' });
  });

  test('served only over the same mTLS as every route', async () => {
    await assert.rejects(server.request('/api/v1/health', { credentials: {} }));
  });
});

describe('health of a whole agent', () => {
  test('on the simulated engine: ok, engine and database answer, its location is listed', async () => {
    const e2e = await startE2eAgent();
    try {
      const body = await e2e.json<HealthJson>('GET', '/health/');
      assert.equal(body.status, 'ok', JSON.stringify(body.problems));
      assert.deepEqual(body.engine, { status: 'ok', kind: 'simulated' });
      assert.deepEqual(body.database, { status: 'ok' });
      assert.deepEqual(body.snapstore_locations.map((location: { path: string }) => location.path), [path.join(e2e.dir, 'snapstores')]);
    } finally {
      await e2e.stop();
    }
  });
});
