// Signals of a running `serve`: SIGTERM drains (no new connections, what is in flight may
// finish for shutdown_grace_seconds, then the rest is cut and counted), a second signal cuts at
// once, SIGHUP reopens the log file instead of killing the agent.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { describe, test } from 'node:test';
import { records, scratch, serve, type Scratch, type Served } from './helpers';

interface Client {
  request(method: string, route: string, body?: unknown): Promise<{ status: number; body: Buffer }>;
  /** A download whose body is read only when asked. */
  download(route: string): Promise<{ received(): number; resume(): void; ended: Promise<{ complete: boolean }> }>;
}

function client(s: Scratch): Client {
  const read = (name: string): string => fs.readFileSync(path.join(s.certs, name), 'utf8');
  const options = { host: '127.0.0.1', port: s.apiPort, ca: read('ca-cert.pem'), cert: read('client-cert.pem'), key: read('client-key.pem'), agent: false as const };
  return {
    request(method, route, body) {
      return new Promise((resolve, reject) => {
        const req = https.request({ ...options, method, path: `/api/v1${route}`, headers: { 'content-type': 'application/json' } }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks) }));
        });
        req.on('error', reject);
        req.end(body === undefined ? undefined : JSON.stringify(body));
      });
    },
    download(route) {
      return new Promise((resolve, reject) => {
        const req = https.request({ ...options, path: `/api/v1${route}` }, (res) => {
          let received = 0;
          res.on('error', () => {});
          const length = Number(res.headers['content-length']);
          // A paused response does not end when its connection is cut: the socket tells.
          const ended = new Promise<{ complete: boolean }>((done) => {
            res.on('end', () => done({ complete: received === length }));
            res.socket.on('close', () => setImmediate(() => done({ complete: res.complete && received === length })));
          });
          res.once('data', (chunk: Buffer) => {
            received += chunk.length;
            res.pause();
            res.on('data', (more: Buffer) => {
              received += more.length;
            });
            resolve({ received: () => received, resume: () => res.resume(), ended });
          });
        });
        req.on('error', reject);
        req.end();
      });
    },
  };
}

async function snapshotDownload(s: Scratch): Promise<ReturnType<Client['download']>> {
  const c = client(s);
  const created = await c.request('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] });
  assert.equal(created.status, 200, created.body.toString());
  const id = (JSON.parse(created.body.toString()) as { snapshot_id: string }).snapshot_id;
  return c.download(`/snapshots/${id}/consume/disk0`);
}

function refused(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.destroy();
      resolve('accepted');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

async function started(s: Scratch): Promise<Served> {
  const agent = serve(s.configFile);
  await agent.waitFor('"msg":"agent ready"');
  return agent;
}

describe('SIGTERM', () => {
  test('stops accepting at once and lets a download in progress finish', { timeout: 120_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    const agent = await started(s);
    t.after(() => agent.child.kill('SIGKILL'));
    const download = await snapshotDownload(s);
    agent.child.kill('SIGTERM');
    await agent.waitFor('no longer accepting connections');
    assert.equal(await refused(s.apiPort), 'ECONNREFUSED');
    assert.equal(await refused(s.nbdPort), 'ECONNREFUSED');
    download.resume();
    assert.deepEqual(await download.ended, { complete: true });
    assert.equal(await agent.exited, 0, agent.output());
    assert.equal(records(agent.output()).filter((r) => r.msg === 'cut what had not finished').length, 0);
  });

  test('after shutdown_grace_seconds, cuts what is left and says how much', { timeout: 120_000 }, async (t) => {
    const s = await scratch({ top: 'shutdown_grace_seconds = 1' });
    t.after(() => s.remove());
    const agent = await started(s);
    t.after(() => agent.child.kill('SIGKILL'));
    const download = await snapshotDownload(s);
    // An NBD client that connected and said nothing yet.
    const nbd = net.connect(s.nbdPort, '127.0.0.1');
    nbd.on('error', () => {});
    await new Promise((resolve) => nbd.once('data', resolve));
    agent.child.kill('SIGTERM');
    assert.equal(await agent.exited, 0, agent.output());
    // Only a reading client notices that its connection is gone.
    download.resume();
    assert.deepEqual(await download.ended, { complete: false });
    const [cut] = records(agent.output()).filter((r) => r.msg === 'cut what had not finished');
    assert.deepEqual({ httpDownloads: cut?.httpDownloads, nbdConnections: cut?.nbdConnections }, { httpDownloads: 1, nbdConnections: 1 });
  });

  test('a second signal during the drain cuts at once', { timeout: 120_000 }, async (t) => {
    // Far longer than the test's own timeout: only the second signal can end it in time.
    const s = await scratch({ top: 'shutdown_grace_seconds = 3600' });
    t.after(() => s.remove());
    const agent = await started(s);
    t.after(() => agent.child.kill('SIGKILL'));
    const download = await snapshotDownload(s);
    agent.child.kill('SIGTERM');
    await agent.waitFor('no longer accepting connections');
    agent.child.kill('SIGINT');
    assert.equal(await agent.exited, 0, agent.output());
    download.resume();
    assert.deepEqual(await download.ended, { complete: false });
    assert.ok(records(agent.output()).some((r) => r.msg === 'second signal: cutting downloads and NBD connections now'));
  });
});

describe('SIGHUP', () => {
  test('reopens the log file (after logrotate moved it) and the agent keeps running', { timeout: 120_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    const logFile = path.join(s.dir, 'log', 'agent.log');
    fs.appendFileSync(s.configFile, '');
    fs.writeFileSync(s.configFile, `log_file = ${JSON.stringify(logFile)}\n${fs.readFileSync(s.configFile, 'utf8')}`);
    const agent = serve(s.configFile);
    t.after(() => agent.child.kill('SIGKILL'));
    const waitForLog = async (file: string, msg: string): Promise<void> => {
      while (!(fs.existsSync(file) && records(fs.readFileSync(file, 'utf8')).some((r) => r.msg === msg))) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    await waitForLog(logFile, 'agent ready');
    fs.renameSync(logFile, `${logFile}.1`);
    agent.child.kill('SIGHUP');
    await waitForLog(logFile, 'SIGHUP: log file reopened');
    // Records of loggers made before the reopen (per connection, per component) follow it too.
    const c = client(s);
    assert.equal((await c.request('GET', '/nope/')).status, 404);
    assert.equal((await c.request('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] })).status, 200);
    agent.child.kill('SIGTERM');
    assert.equal(await agent.exited, 0, agent.output());
    const after = records(fs.readFileSync(logFile, 'utf8')).map((r) => r.msg);
    assert.ok(after.includes('agent stopped'), after.join('\n'));
    assert.ok(!records(fs.readFileSync(`${logFile}.1`, 'utf8')).some((r) => r.msg === 'agent stopped'));
  });
});
