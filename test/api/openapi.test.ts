// src/api/openapi.json against the router (every route described, nothing described that is not
// served) and against the real answers of a whole agent on the simulated engine, successes and
// refusals of every operation.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { DEFAULT_CONSUME_OPTIONS } from '../../src/api/consume';
import OPENAPI from '../../src/api/openapi.json';
import { apiRouter } from '../../src/api/routes';
import { HOST_SOURCES } from '../../src/host/system';
import { silentLogger } from '../../src/core/log';
import { startE2eAgent, type E2eAgent } from '../e2e/helpers';
import { FakeAgentService, HEALTHY_PROBES } from './helpers/fake-service';
import { API_PREFIX } from '../../src/exports/types';
import { openApiProblems, templateOf } from './helpers/openapi';
import { agentClient, type Send } from './helpers/server';

const paths = OPENAPI.paths as Record<string, Record<string, unknown>>;
const described = new Set(Object.entries(paths).flatMap(([path, operations]) => Object.keys(operations).map((method) => `${method.toUpperCase()} ${path}`)));

describe('OpenAPI description', () => {
  test('describes every route of the router, and only those', () => {
    const router = apiRouter({
      service: new FakeAgentService([]), log: silentLogger(), consume: DEFAULT_CONSUME_OPTIONS, bodyLimit: 1024,
      systemInfo: HOST_SOURCES, health: HEALTHY_PROBES,
    });
    const served = new Set<string>();
    for (const layer of router.stack) {
      const path = String(layer.path).slice(API_PREFIX.length).replace(/:(\w+)/g, '{$1}');
      // The router adds HEAD to every GET; the description says so once, and lists it on consume.
      for (const method of layer.methods.filter((m) => m !== 'HEAD' || paths[path]?.head !== undefined)) served.add(`${method} ${path}`);
    }
    assert.deepEqual([...served].sort(), [...described].sort());
  });

  test('is OpenAPI 3.1 with mutual TLS as the security of every operation', () => {
    assert.equal(OPENAPI.openapi, '3.1.0');
    assert.deepEqual(OPENAPI.security, [{ clientCertificate: [] }]);
    assert.equal(OPENAPI.components.securitySchemes.clientCertificate.type, 'mutualTLS');
  });
});

describe('real answers of an agent conform to it', () => {
  let e2e: E2eAgent;
  let send: Send;
  before(async () => {
    e2e = await startE2eAgent();
    send = agentClient(e2e.agent.apiUrl, e2e.certs);
  });
  after(() => e2e.stop());

  test('every operation, its successes and its refusals', async () => {
    const exercised = new Set<string>();
    const problems: string[] = [];
    /** `body` is sent as JSON, `raw` as it is (JSON unless the headers say otherwise). */
    async function check(method: string, route: string, options: { body?: unknown; headers?: Record<string, string>; raw?: string } = {}): Promise<number> {
      const payload = options.raw ?? (options.body === undefined ? undefined : JSON.stringify(options.body));
      const headers = payload === undefined ? options.headers : { 'content-type': 'application/json', ...options.headers };
      const response = await send(method, route, payload, headers);
      const path = `${API_PREFIX}${route.split('?')[0]}`;
      const template = templateOf(path);
      if (template !== undefined) exercised.add(`${method} ${template}`);
      problems.push(...openApiProblems({ method, path, status: response.status, contentType: response.headers['content-type'] as string | undefined, body: response.body }));
      return response.status;
    }

    assert.equal(await check('GET', '/disks/'), 200);
    assert.equal(await check('GET', '/disks?includeVirtual=true&includeSwap=1'), 200);
    assert.equal(await check('GET', '/disks?includeVirtual=maybe'), 400);
    assert.equal(await check('GET', '/disks/disk0'), 200);
    assert.equal(await check('GET', '/disks/nosuch/'), 404);
    assert.equal(await check('GET', '/snapshots'), 200);
    assert.equal(await check('POST', '/snapshots/', { raw: '{"tracked_disk_ids": []}' }), 400);
    assert.equal(await check('POST', '/snapshots/', { raw: '{"tracked_disk_ids": ["nosuch"]}' }), 404);
    assert.equal(await check('POST', '/snapshots/', { raw: 'x'.repeat(70_000) }), 413);
    assert.equal(await check('POST', '/snapshots/', { raw: '{}', headers: { 'content-type': 'multipart/form-data; boundary=x' } }), 415);
    assert.equal(await check('POST', '/snapshots/', { body: { tracked_disk_ids: ['disk0'] } }), 200);
    const [snapshot] = await e2e.json<Array<{ snapshot_id: string; volume_snapshots: Array<{ generation_id: string; snapshot_number: number }> }>>('GET', '/snapshots');
    const id = snapshot.snapshot_id;
    const { generation_id: generation, snapshot_number: number } = snapshot.volume_snapshots[0];
    assert.equal(await check('POST', '/snapshots/', { body: { tracked_disk_ids: ['disk0'] } }), 409);
    assert.equal(await check('GET', '/snapshots'), 200);
    assert.equal(await check('GET', `/snapshots/${id}/`), 200);
    assert.equal(await check('GET', '/snapshots/123'), 404);
    assert.equal(await check('GET', `/snapshots/${id}/changes/disk0`), 200);
    assert.equal(await check('GET', `/snapshots/${id}/changes/disk0?previousGenerationID=${generation}&previousNumber=${number}`), 200);
    assert.equal(await check('GET', `/snapshots/${id}/changes/disk0?previousGenerationID=${generation}&previousNumber=${number + 1}`), 400);
    assert.equal(await check('GET', `/snapshots/${id}/changes/disk1`), 404);
    assert.equal(await check('GET', `/snapshots/${id}/consume/disk0`, { headers: { range: 'bytes=0-511' } }), 206);
    assert.equal(await check('GET', `/snapshots/${id}/consume/disk0`, { headers: { range: 'bytes=0-1,4-5' } }), 206);
    assert.equal(await check('GET', `/snapshots/${id}/consume/disk0`, { headers: { range: 'bytes=999999999-' } }), 416);
    assert.equal(await check('HEAD', `/snapshots/${id}/consume/disk0`), 200);
    assert.equal(await check('GET', `/snapshots/${id}/consume/disk0`), 200);
    assert.equal(await check('GET', `/snapshots/${id}/consume/disk9`), 404);
    assert.equal(await check('GET', `/snapshots/${id}/changes/disk0?markZeroRanges=true`), 200);
    assert.equal(await check('GET', `/snapshots/${id}/digests/disk0?block_size=16777216`), 200);
    assert.equal(await check('GET', `/snapshots/${id}/digests/disk0/?length=65536`, { headers: { accept: 'application/vnd.coriolis.digests' } }), 200);
    assert.equal(await check('HEAD', `/snapshots/${id}/digests/disk0`), 200);
    assert.equal(await check('GET', `/snapshots/${id}/digests/disk0?block_size=1000`), 400);
    assert.equal(await check('GET', `/snapshots/${id}/digests/disk0`, { headers: { accept: 'application/json' } }), 406);
    assert.equal(await check('GET', `/snapshots/${id}/digests/disk9`), 404);
    assert.equal(await check('GET', '/snapstores/'), 200);
    assert.equal(await check('GET', '/snapstorelocations'), 200);
    assert.equal(await check('GET', '/snapstoremappings'), 200);
    assert.equal(await check('POST', '/snapstoremappings', { body: { tracked_disk_id: 'disk0', snapstore_location_id: `${e2e.dir}/snapstores` } }), 409);
    assert.equal(await check('POST', '/snapstoremappings', { body: { tracked_disk_id: 'disk0', snapstore_location_id: '/elsewhere' } }), 404);
    assert.equal(await check('POST', '/snapstoremappings', { raw: '{"tracked_disk_id": ""}' }), 400);
    assert.equal(await check('POST', '/snapstoremappings', { raw: 'tracked_disk_id=disk0', headers: { 'content-type': 'application/x-www-form-urlencoded; charset=latin1' } }), 415);
    assert.equal(await check('GET', '/systeminfo/'), 200);
    assert.equal(await check('GET', '/health'), 200);
    assert.equal(await check('GET', '/metrics/'), 200);
    assert.equal(await check('GET', '/openapi.json'), 200);
    assert.equal(await check('PUT', '/snapshots/'), 405);
    assert.equal(await check('GET', '/nothing'), 404);
    assert.equal(await check('DELETE', `/snapshots/${id}/`), 200);
    assert.equal(await check('DELETE', `/snapshots/${id}`), 200, 'deleting an unknown snapshot succeeds (idempotent)');

    assert.deepEqual(problems, []);
    assert.deepEqual([...described].filter((operation) => !exercised.has(operation)), [], 'operations this test never exercised');
  });

  test('the served description is the file in the repository', async () => {
    assert.deepEqual(await e2e.json('GET', '/openapi.json'), OPENAPI);
  });
});
