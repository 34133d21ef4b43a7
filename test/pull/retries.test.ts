// The pull's HTTPS client against an agent in trouble: 5xx answers and connections cut mid-body
// are retried with back-off until an answer comes; a creation is sent once; after the last
// attempt the failure says how many there were.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isAgentError } from '../../src/core/errors';
import { AgentClient } from '../../src/pull/http';
import { makeTestCerts, type TestCerts } from '../helpers/certs';

let dir: string;
let certs: TestCerts;
let server: https.Server;
let port: number;
/** What the server does with the next requests, in order; then it answers 200 {"ok": true}. */
let script: Array<'503' | 'cut'> = [];
let requests = 0;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-pull-retries-'));
  certs = makeTestCerts(dir);
  server = https.createServer({
    cert: fs.readFileSync(certs.serverCert), key: fs.readFileSync(certs.serverKey), ca: fs.readFileSync(certs.caCert),
    requestCert: true, rejectUnauthorized: true,
  }, (_req, res) => {
    requests++;
    const step = script.shift();
    if (step === '503') {
      res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'Service Unavailable', details: 'busy' }));
    } else if (step === 'cut') {
      // Promises 100 bytes, sends 10, and hangs up: a short body must never pass for a whole one.
      res.writeHead(200, { 'content-length': '100' });
      res.write('0123456789', () => res.destroy());
    } else {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});

after(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  fs.rmSync(dir, { recursive: true, force: true });
});

function client(attempts: number): AgentClient {
  return new AgentClient(`https://localhost:${port}`, {
    ca: fs.readFileSync(certs.caCert, 'utf8'), cert: fs.readFileSync(certs.clientCert, 'utf8'), key: fs.readFileSync(certs.clientKey, 'utf8'),
  }, { connections: 2, retry: { attempts, baseDelayMs: 10, maxDelayMs: 40 } });
}

describe('pull: retries', { timeout: 30_000 }, () => {
  it('retries 5xx answers and cut connections until the answer comes', async () => {
    script = ['503', 'cut', '503'];
    requests = 0;
    const agent = client(6);
    try {
      assert.deepEqual(await agent.json('GET', '/snapshots'), { ok: true });
      assert.equal(requests, 4);
    } finally {
      agent.close();
    }
  });

  it('gives up after the last attempt, saying how many there were', async () => {
    script = ['cut', 'cut', 'cut'];
    requests = 0;
    const agent = client(3);
    try {
      await assert.rejects(agent.json('GET', '/snapshots'), (err) => isAgentError(err, 'unavailable') && /after 3 attempts/.test(err.message));
      assert.equal(requests, 3);
      script = ['503', '503', '503'];
      requests = 0;
      await assert.rejects(agent.json('GET', '/snapshots'), (err) => isAgentError(err, 'unavailable') && /HTTP 503 Service Unavailable: busy/.test(err.message));
      assert.equal(requests, 3, 'the last answer is reported as it came');
      script = [];
    } finally {
      agent.close();
    }
  });

  it('sends a creation once, whatever the answer', async () => {
    script = ['503'];
    requests = 0;
    const agent = client(6);
    try {
      await assert.rejects(agent.json('POST', '/snapshots', { tracked_disk_ids: ['disk0'] }, false), (err) => isAgentError(err, 'unavailable'));
      assert.equal(requests, 1);
    } finally {
      agent.close();
    }
  });
});
