// The Linux kernel NBD client against our server (inside the VM): nbd-client attaches an
// export to /dev/nbd0, over TLS with client certificates (nbd-client then runs a userspace TLS
// proxy and hands the kernel a socketpair) and in plaintext on loopback; the device reads back
// the image byte for byte, is read-only, and detaches cleanly. The kernel never negotiates
// structured replies, so this is the simple-reply path under a real block layer.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/core/log';
import { createNbdServer, type NbdServer } from '../../src/nbd/server';
import { makeTestCerts, type TestCerts } from '../helpers/certs';
import { attachLoopDevice, findCommand, type LoopDevice } from '../native/helpers/loop';
import { FakeExportRegistry, writePatternImage } from '../nbd/helpers/fake-registry';
import { run, waitFor } from '../nbd/helpers/server';
import { vmSkipReason } from './run';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 16 * MiB;
const EXPORT_NAME = '4242/vda';
const DEVICE = '/dev/nbd0';

function skipReason(): string | false {
  const notVm = vmSkipReason();
  if (notVm) return notVm;
  if (findCommand('nbd-client') === undefined) return 'nbd-client is not installed (Debian package nbd-client)';
  if (!fs.existsSync(DEVICE)) return `${DEVICE} does not exist (nbd driver not loaded)`;
  return false;
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Asks the kernel for the device's size; 0 while nothing is attached. */
function deviceSize(): number {
  return Number(fs.readFileSync(`/sys/block/${path.basename(DEVICE)}/size`, 'utf8').trim()) * 512;
}

describe('kernel nbd-client (VM)', { skip: skipReason() }, () => {
  let dir: string;
  let certs: TestCerts;
  let loop: LoopDevice;
  let imageHash: string;
  const registry = new FakeExportRegistry();

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-nbd-kernel-'));
    fs.mkdirSync(path.join(dir, 'certs'));
    certs = makeTestCerts(path.join(dir, 'certs'));
    const file = path.join(dir, 'image.raw');
    const image = writePatternImage(file, IMAGE_SIZE, 42);
    imageHash = createHash('sha256').update(image).digest('hex');
    // The guest's /tmp cannot be opened with O_DIRECT; a loop device over it can, as a real disk.
    loop = attachLoopDevice(file);
    registry.add({ name: EXPORT_NAME, file: loop.path, description: 'kernel client test image' });
  });

  after(async () => {
    loop?.detach();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function attachAndVerify(server: NbdServer, port: number, extraArgs: string[]): Promise<void> {
    const attach = await run('nbd-client', ['127.0.0.1', String(port), DEVICE, '-N', EXPORT_NAME, ...extraArgs], { timeoutMs: 120_000 });
    assert.equal(attach.code, 0, `nbd-client: ${attach.stderr}${attach.stdout}`);
    try {
      await waitFor(() => deviceSize() === IMAGE_SIZE, `${DEVICE} to show the export size`, 30_000);
      const readOnly = await run('blockdev', ['--getro', DEVICE]);
      assert.equal(readOnly.stdout.trim(), '1', 'the device is read-only');
      assert.equal(await sha256(DEVICE), imageHash, 'the device reads back the image');
      const direct = await run('dd', [`if=${DEVICE}`, 'of=/dev/null', 'iflag=direct', 'bs=1M'], { timeoutMs: 120_000 });
      assert.equal(direct.code, 0, direct.stderr);
      const write = await run('dd', ['if=/dev/zero', `of=${DEVICE}`, 'bs=4096', 'count=1', 'oflag=direct'], { timeoutMs: 60_000 });
      assert.notEqual(write.code, 0, 'writing to the device fails');
    } finally {
      const detach = await run('nbd-client', ['-d', DEVICE], { timeoutMs: 60_000 });
      assert.equal(detach.code, 0, `nbd-client -d: ${detach.stderr}`);
    }
    await waitFor(() => server.connectionCount === 0, 'the server to see the disconnect', 30_000);
    await waitFor(() => deviceSize() === 0, `${DEVICE} to be released`, 30_000);
  }

  /** A server that requires TLS with the test certificates. */
  function tlsServer(): ReturnType<typeof createNbdServer> {
    const pem = (file: string): string => fs.readFileSync(file, 'utf8');
    return createNbdServer({
      registry,
      log: silentLogger(),
      tls: { mode: 'require', certificate: pem(certs.serverCert), key: pem(certs.serverKey), caCertificate: pem(certs.caCert) },
      bind: '127.0.0.1',
      port: 0,
      maxConnections: 4,
      // Everything is emulated in the VM: TLS handshakes take a while.
      handshakeTimeoutMs: 60_000,
    });
  }

  it('attaches over TLS with client certificates, reads the image, detaches', async () => {
    const server = tlsServer();
    const { port } = await server.listen();
    try {
      await attachAndVerify(server, port, ['-certfile', certs.clientCert, '-keyfile', certs.clientKey, '-cacertfile', certs.caCert,
        '-tlshostname', 'localhost']);
    } finally {
      await server.close();
    }
  });

  it('attaches in plaintext on loopback when TLS is off', async () => {
    const server = createNbdServer({
      registry, log: silentLogger(), tls: { mode: 'off' }, bind: '127.0.0.1', port: 0, maxConnections: 4, handshakeTimeoutMs: 60_000,
    });
    const { port } = await server.listen();
    try {
      await attachAndVerify(server, port, []);
    } finally {
      await server.close();
    }
  });

  it('refuses a kernel client that does not start TLS', async () => {
    const server = tlsServer();
    const { port } = await server.listen();
    try {
      const plain = await run('nbd-client', ['127.0.0.1', String(port), DEVICE, '-N', EXPORT_NAME], { timeoutMs: 120_000 });
      assert.notEqual(plain.code, 0, 'a plaintext client is refused');
      assert.equal(deviceSize(), 0);
    } finally {
      await server.close();
    }
  });
});
