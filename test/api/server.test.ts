import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import bunyan from 'bunyan';
import { createApp } from '../../src/api/app';
import { parseClientMatcher, matchesClient } from '../../src/doors/allow-list';
import { createApiServer, listenApiServer, type ApiServerOptions } from '../../src/api/server';
import { createCertificateAuthority, issueCertificate, type IssuedCertificate } from '../../src/cli/gen-certs';
import { silentLogger } from '../../src/core/log';
import { makeTestCerts } from '../helpers/certs';
import { FakeAgentService, HEALTHY_PROBES } from './helpers/fake-service';
import { closeApiServer, json, randomFile, request, tempDir, type ClientCredentials } from './helpers/server';

const DAY = 24 * 60 * 60 * 1000;
const now = Date.now();
const current = { notBefore: new Date(now - DAY), notAfter: new Date(now + DAY) };

let dir: string;
let ca: IssuedCertificate;
let serverCert: IssuedCertificate;
let clients: Record<'valid' | 'expired' | 'notYetValid' | 'serverOnly' | 'otherCa', ClientCredentials>;
let validFingerprint: string;
let service: FakeAgentService;
const servers: https.Server[] = [];

before(async () => {
  dir = tempDir('csa-api-server-');
  ca = await createCertificateAuthority('server test CA', current);
  serverCert = await issueCertificate(ca, { commonName: 'localhost', usage: 'server', hosts: ['localhost', '127.0.0.1'], validity: current });
  const client = async (validity: typeof current, usage: 'client' | 'server' = 'client'): Promise<ClientCredentials> => {
    const issued = await issueCertificate(ca, { commonName: 'test client', usage, validity });
    return { cert: issued.certificatePem, key: issued.keyPem };
  };
  const valid = await issueCertificate(ca, { commonName: 'test client', usage: 'client', validity: current });
  validFingerprint = new (await import('node:crypto')).X509Certificate(valid.certificatePem).fingerprint256;
  const foreign = makeTestCerts(dir);
  clients = {
    valid: { cert: valid.certificatePem, key: valid.keyPem },
    expired: await client({ notBefore: new Date(now - 10 * DAY), notAfter: new Date(now - DAY) }),
    notYetValid: await client({ notBefore: new Date(now + DAY), notAfter: new Date(now + 10 * DAY) }),
    serverOnly: await client(current, 'server'),
    otherCa: { cert: fs.readFileSync(foreign.clientCert, 'utf8'), key: fs.readFileSync(foreign.clientKey, 'utf8') },
  };
  const disk = randomFile(dir, 'vda.img', 4096);
  service = new FakeAgentService([{ name: 'vda', file: disk.file, size: 4096, tracked: true, mapped: true }]);
});

after(async () => {
  await Promise.all(servers.map((server) => closeApiServer(server, 100)));
  fs.rmSync(dir, { recursive: true, force: true });
});

async function start(options: Partial<ApiServerOptions> = {}): Promise<number> {
  const log = options.log ?? silentLogger();
  const server = createApiServer({
    tls: { certificate: serverCert.certificatePem, key: serverCert.keyPem, caCertificate: ca.certificatePem },
    handler: createApp({ service, log, health: HEALTHY_PROBES }).callback(),
    log,
    ...options,
  });
  await listenApiServer(server, 0, '127.0.0.1');
  servers.push(server);
  return (server.address() as AddressInfo).port;
}

const getDisks = (port: number, credentials: ClientCredentials): ReturnType<typeof request> =>
  request(port, ca.certificatePem, '/api/v1/disks', { credentials });

/** The request fails at the TLS layer: no HTTP status ever arrives. */
async function refusedAtHandshake(promise: Promise<unknown>): Promise<void> {
  await assert.rejects(promise, (err: NodeJS.ErrnoException) => {
    assert.match(`${err.code ?? ''} ${err.message}`, /ECONNRESET|EPROTO|certificate|alert|socket hang up/i);
    return true;
  });
}

describe('mutual TLS', () => {
  let port: number;
  before(async () => {
    port = await start();
  });

  test('a client certificate from the CA is served', async () => {
    assert.equal((await getDisks(port, clients.valid)).status, 200);
  });

  test('no certificate, another CA, expired, not yet valid, or a server-only certificate: refused at the handshake', async () => {
    await refusedAtHandshake(getDisks(port, {}));
    await refusedAtHandshake(getDisks(port, clients.otherCa));
    await refusedAtHandshake(getDisks(port, clients.expired));
    await refusedAtHandshake(getDisks(port, clients.notYetValid));
    await refusedAtHandshake(getDisks(port, clients.serverOnly));
  });

  test('TLS older than 1.2 is refused', async () => {
    const attempt = new Promise<void>((resolve, reject) => {
      const socket = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: ca.certificatePem, ...clients.valid, maxVersion: 'TLSv1.1', minVersion: 'TLSv1' }, () => {
        socket.destroy();
        reject(new Error('a TLS 1.1 handshake succeeded'));
      });
      socket.on('error', () => resolve());
    });
    await attempt;
  });

  test('plain HTTP on the port is closed at once, not left hanging', async () => {
    const started = Date.now();
    await assert.rejects(new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, path: '/api/v1/disks', timeout: 5000 }, resolve);
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', reject);
      req.end();
    }), (err: NodeJS.ErrnoException) => err.message !== 'timed out');
    assert.ok(Date.now() - started < 2000);
  });

  test('keep-alive: a second request reuses the connection', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const reused: boolean[] = [];
    for (let i = 0; i < 2; i++) {
      await new Promise<void>((resolve, reject) => {
        const req = https.request({ host: '127.0.0.1', servername: 'localhost', port, path: '/api/v1/snapshots', ca: ca.certificatePem, ...clients.valid, agent }, (res) => {
          res.resume();
          res.on('end', resolve);
        });
        req.on('socket', () => reused.push(req.reusedSocket));
        req.on('error', reject);
        req.end();
      });
    }
    agent.destroy();
    assert.deepEqual(reused, [false, true]);
  });
});

describe('timeouts', () => {
  test('a peer that never starts the handshake is disconnected', async () => {
    const port = await start({ timeouts: { handshakeMs: 200 } });
    const started = Date.now();
    await new Promise<void>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.on('close', () => resolve());
      socket.on('error', () => undefined);
    });
    assert.ok(Date.now() - started < 3000);
  });

  test('a client that never finishes its headers is disconnected', async () => {
    const port = await start({ timeouts: { headersMs: 300, requestMs: 300 } });
    const started = Date.now();
    const received = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: ca.certificatePem, ...clients.valid }, () => {
        socket.write('GET /api/v1/disks HTTP/1.1\r\nHost: localhost\r\n');
      });
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
    });
    assert.ok(Date.now() - started < 5000);
    assert.match(received, /^$|^HTTP\/1\.1 408/);
  });
});

describe('allow-list of client certificates', () => {
  test('a listed subject or fingerprint is served, anyone else gets a 403 JSON', async () => {
    const bySubject = await start({ allowedClients: ['CN=test client'] });
    assert.equal((await getDisks(bySubject, clients.valid)).status, 200);

    const byFingerprint = await start({ allowedClients: [`sha256:${validFingerprint}`] });
    assert.equal((await getDisks(byFingerprint, clients.valid)).status, 200);

    const someoneElse = await start({ allowedClients: ['CN=backup', validFingerprint.replace(/^../, '00')] });
    const refused = await getDisks(someoneElse, clients.valid);
    assert.equal(refused.status, 403);
    const body = json(refused) as { error: string; details: string };
    assert.equal(body.error, 'Forbidden');
    assert.match(body.details, /CN=test client.*is not allowed/);
  });

  test('matching rules: attributes in any order, all of them; fingerprints with or without colons', () => {
    const identity = { subject: 'O=Coriolis, CN=test client', fingerprint256: validFingerprint };
    assert.ok(matchesClient(parseClientMatcher('CN=test client, O=Coriolis'), identity));
    assert.ok(matchesClient(parseClientMatcher('/O=Coriolis/CN=test client'), identity));
    assert.ok(matchesClient(parseClientMatcher('cn=test client,o=Coriolis'), identity));
    assert.ok(!matchesClient(parseClientMatcher('CN=test client'), identity), 'a partial subject does not match');
    assert.ok(matchesClient(parseClientMatcher(validFingerprint.replace(/:/g, '').toLowerCase()), identity));
    assert.throws(() => parseClientMatcher('sha256:1234'), /not a SHA-256 fingerprint/);
    assert.throws(() => createApiServer({
      tls: { certificate: serverCert.certificatePem, key: serverCert.keyPem, caCertificate: ca.certificatePem },
      allowedClients: ['nobody'], handler: () => undefined, log: silentLogger(),
    }), /neither a certificate subject/);
  });
});

describe('access log', () => {
  test('one record per request with the client certificate subject', async () => {
    const records = new bunyan.RingBuffer({ limit: 100 });
    const log = bunyan.createLogger({ name: 'test', streams: [{ type: 'raw', stream: records, level: 'info' }] });
    const port = await start({ log });
    await getDisks(port, clients.valid);
    await request(port, ca.certificatePem, '/api/v1/nothing', { credentials: clients.valid });
    for (let i = 0; i < 50 && records.records.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    const lines = records.records as Array<Record<string, unknown>>;
    assert.deepEqual(lines.map((line) => [line.method, line.url, line.status, line.client]), [
      ['GET', '/api/v1/disks', 200, 'CN=test client'],
      ['GET', '/api/v1/nothing', 404, 'CN=test client'],
    ]);
  });
});
