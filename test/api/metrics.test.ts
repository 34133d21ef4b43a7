// GET /metrics on a whole agent (simulated engine): the figures move with real traffic (HTTP
// Range downloads, NBD reads by nbdcopy, requests, snapstore growth) and the state gauges say
// what the REST answers say.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { startE2eAgent, type E2eAgent } from '../e2e/helpers';

const MiB = 1024 * 1024;
const CONSUME_ROUTE = '/api/v1/snapshots/:snapshotId/consume/:diskId';
let e2e: E2eAgent;
let snapshot: { snapshot_id: string; volume_snapshots: Array<{ snapshot_number: number; generation_id: string }> };

before(async () => {
  e2e = await startE2eAgent();
  snapshot = await e2e.json('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] });
});

after(() => e2e.stop());

/** Every sample of the exposition text, keyed `name{labels}` exactly as printed. */
async function scrape(): Promise<Map<string, number>> {
  const response = await e2e.request('GET', '/metrics');
  assert.equal(response.status, 200);
  assert.match(String(response.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  const samples = new Map<string, number>();
  for (const line of response.body.toString('utf8').split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    samples.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return samples;
}

/** Labels in prom-client's order of declaration. */
function key(name: string, labels: Record<string, string>): string {
  const inner = Object.entries(labels).map(([label, value]) => `${label}="${value}"`).join(',');
  return `coriolis_agent_${name}{${inner}}`;
}

const value = (samples: Map<string, number>, name: string, labels: Record<string, string>): number => samples.get(key(name, labels)) ?? 0;

describe('metrics', () => {
  test('HTTP: served bytes, request counts and latencies move with downloads and refusals', async () => {
    const before = await scrape();
    const consume = `/snapshots/${snapshot.snapshot_id}/consume/disk0`;
    for (const range of ['bytes=0-1048575', `bytes=${10 * MiB}-${11 * MiB - 1}`]) {
      assert.equal((await e2e.request('GET', consume, { headers: { range } })).status, 206);
    }
    assert.equal((await e2e.request('GET', '/nothing')).status, 404);
    const afterwards = await scrape();
    const delta = (name: string, labels: Record<string, string>): number => value(afterwards, name, labels) - value(before, name, labels);
    assert.equal(delta('served_bytes_total', { protocol: 'http', disk: 'disk0' }), 2 * MiB);
    const consumed = { method: 'GET', route: CONSUME_ROUTE, status: '206' };
    assert.equal(delta('http_requests_total', consumed), 2);
    assert.equal(delta('http_request_duration_seconds_count', consumed), 2);
    assert.ok(delta('http_request_duration_seconds_sum', consumed) > 0);
    assert.equal(delta('http_requests_total', { method: 'GET', route: 'unmatched', status: '404' }), 1);
    assert.equal(delta('http_requests_total', { method: 'GET', route: '/api/v1/metrics', status: '200' }), 1, 'the first scrape');
    assert.ok(value(afterwards, 'connections', { protocol: 'http' }) >= 1, 'at least the scrape\'s own connection');
  });

  test('NBD: bytes read by nbdcopy, and open connections', async () => {
    const before = await scrape();
    const out = path.join(e2e.dir, 'nbd-copy.raw');
    const url = `nbds://127.0.0.1:${new URL(e2e.agent.nbdUrl).port}/${snapshot.snapshot_id}%2Fdisk0?tls-certificates=${e2e.certs}`;
    await promisify(execFile)('nbdcopy', [url, out], { timeout: 60_000 });
    const size = fs.statSync(e2e.disks[0]).size;
    assert.equal(fs.statSync(out).size, size);
    const afterwards = await scrape();
    const served = (samples: Map<string, number>): number => value(samples, 'served_bytes_total', { protocol: 'nbd', disk: 'disk0' });
    // nbdcopy may skip what block status calls zero; it reads the rest once.
    assert.ok(served(afterwards) - served(before) > 0 && served(afterwards) - served(before) <= size, `${served(afterwards) - served(before)} bytes`);

    const socket = net.connect(Number(new URL(e2e.agent.nbdUrl).port), '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    try {
      let open = 0;
      // The server counts the connection once it accepted it; the scrape that sees it ends the wait.
      while (open !== 1) open = value(await scrape(), 'connections', { protocol: 'nbd' });
    } finally {
      socket.destroy();
    }
  });

  test('state: snapshots by state, snapstore space and CBT per disk, as the REST answers say', async () => {
    const samples = await scrape();
    assert.equal(value(samples, 'snapshots', { state: 'ok' }), 1);
    assert.equal(value(samples, 'snapshots', { state: 'failed' }), 0);
    const [store] = await e2e.json<Array<{ tracked_disk_id: string; allocated_disk_space: number }>>('GET', '/snapstores/');
    const labels = { snapshot_id: snapshot.snapshot_id, disk: 'disk0' };
    assert.equal(value(samples, 'snapstore_allocated_bytes', labels), store.allocated_disk_space);
    assert.ok(samples.has(key('snapstore_used_bytes', labels)));
    const volume = snapshot.volume_snapshots[0];
    assert.equal(value(samples, 'cbt_snapshot_number', { disk: 'disk0' }), volume.snapshot_number);
    assert.equal(value(samples, 'cbt_generation_info', { disk: 'disk0', generation_id: volume.generation_id }), 1);
    assert.ok(samples.has(key('cbt_snapshot_number', { disk: 'disk1' })), 'every tracked disk, snapshotted or not');
  });

  test('snapstore growth is counted when writes fill the snapstore', async () => {
    const before = value(await scrape(), 'snapstore_growths_total', { disk: 'disk0', result: 'ok' });
    const fd = fs.openSync(e2e.disks[0], 'r+');
    fs.writeSync(fd, Buffer.alloc(6 * MiB, 0x5a), 0, 6 * MiB, 20 * MiB);
    fs.closeSync(fd);
    // The simulated engine notices writes on its next scan; the test's timeout bounds the wait.
    let grown = before;
    while (grown === before) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      grown = value(await scrape(), 'snapstore_growths_total', { disk: 'disk0', result: 'ok' });
    }
    assert.ok(grown > before);
  });
});
