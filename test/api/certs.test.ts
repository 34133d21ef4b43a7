import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { createApp } from '../../src/api/app';
import { createApiServer, listenApiServer } from '../../src/api/server';
import { CERTIFICATE_FILES, generateCertificates, genCertsCommand } from '../../src/cli/gen-certs';
import { silentLogger } from '../../src/core/log';
import { FakeAgentService, HEALTHY_PROBES } from './helpers/fake-service';
import { closeApiServer, request, tempDir } from './helpers/server';

let dir: string;

before(() => {
  dir = tempDir('csa-certs-');
});

after(() => fs.rmSync(dir, { recursive: true, force: true }));

const read = (file: string): string => fs.readFileSync(file, 'utf8');
const openssl = (...args: string[]): string => execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** Runs genCertsCommand with its output captured. */
async function command(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  const captured = { stdout: '', stderr: '' };
  const status = await genCertsCommand(args, {
    stdout: { write: (text: string) => (captured.stdout += text) },
    stderr: { write: (text: string) => (captured.stderr += text) },
  });
  return { status, ...captured };
}

describe('generateCertificates', () => {
  let out: string;
  before(async () => {
    out = path.join(dir, 'set');
    await generateCertificates({ outDir: out, hosts: ['agent.example', '192.0.2.7', '::1'] });
  });

  test('the five files libnbd and curl expect, keys private and PKCS#8', () => {
    assert.deepEqual(fs.readdirSync(out).sort(), Object.values(CERTIFICATE_FILES).sort());
    for (const key of [CERTIFICATE_FILES.serverKey, CERTIFICATE_FILES.clientKey]) {
      assert.equal(fs.statSync(path.join(out, key)).mode & 0o777, 0o600, key);
      assert.match(read(path.join(out, key)), /^-----BEGIN PRIVATE KEY-----\n/);
    }
    assert.equal(fs.statSync(path.join(out, CERTIFICATE_FILES.caCert)).mode & 0o777, 0o644);
  });

  test('SANs: IP for addresses, DNS otherwise; usages; validity; chains verify with OpenSSL', () => {
    const server = new crypto.X509Certificate(read(path.join(out, CERTIFICATE_FILES.serverCert)));
    assert.equal(server.subjectAltName, 'DNS:agent.example, IP Address:192.0.2.7, IP Address:0:0:0:0:0:0:0:1');
    assert.equal(server.subject, 'CN=agent.example');
    const days = (Date.parse(server.validTo) - Date.now()) / 86_400_000;
    assert.ok(days > 824 && days < 826, `valid for ${days} days`);
    assert.ok(server.checkIssued(new crypto.X509Certificate(read(path.join(out, CERTIFICATE_FILES.caCert)))));
    assert.ok(server.checkPrivateKey(crypto.createPrivateKey(read(path.join(out, CERTIFICATE_FILES.serverKey)))));
    const ca = path.join(out, CERTIFICATE_FILES.caCert);
    assert.match(openssl('verify', '-CAfile', ca, '-purpose', 'sslserver', path.join(out, CERTIFICATE_FILES.serverCert)), /: OK/);
    assert.match(openssl('verify', '-CAfile', ca, '-purpose', 'sslclient', path.join(out, CERTIFICATE_FILES.clientCert)), /: OK/);
    assert.throws(() => openssl('verify', '-CAfile', ca, '-purpose', 'sslclient', path.join(out, CERTIFICATE_FILES.serverCert)));
    assert.match(openssl('x509', '-in', path.join(out, CERTIFICATE_FILES.clientCert), '-noout', '-ext', 'extendedKeyUsage'), /TLS Web Client Authentication/);
  });

  test('GnuTLS (what nbdinfo and qemu use) accepts the chain', { skip: !fs.existsSync('/usr/bin/certtool') }, () => {
    for (const leaf of [CERTIFICATE_FILES.serverCert, CERTIFICATE_FILES.clientCert]) {
      const output = execFileSync('certtool', ['--verify', '--load-ca-certificate', path.join(out, CERTIFICATE_FILES.caCert),
        '--infile', path.join(out, leaf)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      assert.match(output, /Verified/, leaf);
    }
  });

  test('the API serves with them: node, curl and gnutls-cli clients get through', async () => {
    const local = path.join(dir, 'local');
    const files = await generateCertificates({ outDir: local });
    const log = silentLogger();
    const server = createApiServer({
      tls: { certificate: read(files.serverCert), key: read(files.serverKey), caCertificate: read(files.caCert) },
      handler: createApp({ service: new FakeAgentService([]), log, health: HEALTHY_PROBES }).callback(),
      log,
    });
    await listenApiServer(server, 0, '127.0.0.1');
    const { port } = server.address() as AddressInfo;
    try {
      const response = await request(port, read(files.caCert), '/api/v1/snapshots', { credentials: { cert: read(files.clientCert), key: read(files.clientKey) } });
      assert.equal(response.status, 200);
      const run = promisify(execFile);
      for (const host of ['localhost', '127.0.0.1']) {
        const { stdout } = await run('curl', ['-sS', '--fail', '--max-time', '20', '--cacert', files.caCert, '--cert', files.clientCert, '--key', files.clientKey,
          `https://${host}:${port}/api/v1/snapshots`]);
        assert.equal(stdout, '[]');
      }
      if (fs.existsSync('/usr/bin/gnutls-cli')) {
        const child = execFile('gnutls-cli', ['--x509cafile', files.caCert, '--x509certfile', files.clientCert, '--x509keyfile', files.clientKey,
          '--port', String(port), 'localhost']);
        child.stdin!.end('GET /api/v1/snapshots HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
        let output = '';
        child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
        const status = await new Promise<number | null>((resolve) => child.on('exit', resolve));
        assert.match(output, /HTTP\/1\.1 200 OK/, `gnutls-cli exited ${String(status)}: ${output}`);
      }
    } finally {
      await closeApiServer(server, 100);
    }
  });
});

describe('gen-certs command', () => {
  test('writes a set, refuses to overwrite it, replaces it with --force', async () => {
    const out = path.join(dir, 'cli');
    const first = await command(['--out', out, '--hosts', 'localhost, 10.0.0.5']);
    assert.equal(first.status, 0, first.stderr);
    assert.deepEqual(first.stdout.trim().split('\n'), Object.values(CERTIFICATE_FILES).map((name) => path.join(out, name)));
    const before = read(path.join(out, CERTIFICATE_FILES.caCert));

    const again = await command(['--out', out]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /refusing to overwrite .*ca-cert\.pem.*--force/);
    assert.equal(read(path.join(out, CERTIFICATE_FILES.caCert)), before);

    const forced = await command(['--out', out, '--force']);
    assert.equal(forced.status, 0, forced.stderr);
    assert.notEqual(read(path.join(out, CERTIFICATE_FILES.caCert)), before);
    assert.equal(fs.statSync(path.join(out, CERTIFICATE_FILES.clientKey)).mode & 0o777, 0o600);
    assert.deepEqual(fs.readdirSync(out).sort(), Object.values(CERTIFICATE_FILES).sort(), 'no temporary files left');
    const server = new crypto.X509Certificate(read(path.join(out, CERTIFICATE_FILES.serverCert)));
    assert.equal(server.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1', 'default hosts');
  });

  test('usage errors exit 2, a bad host exits 1, and nothing is written', async () => {
    const unknown = await command(['--out', dir, '--bogus']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /Unknown option '--bogus'[\s\S]*usage:/);
    assert.equal((await command([])).status, 2);
    assert.equal((await command(['--out', dir, 'extra'])).status, 2);
    const out = path.join(dir, 'bad-host');
    const badHost = await command(['--out', out, '--hosts', 'good.example,bad host']);
    assert.equal(badHost.status, 1);
    assert.match(badHost.stderr, /"bad host" is neither an IP address nor a DNS name/);
    assert.equal(fs.existsSync(out), false);
  });
});
