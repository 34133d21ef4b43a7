// Real NBD clients from Debian against the server: nbdinfo, nbdcopy, nbdsh (libnbd's Python
// binding) and qemu-img, over TLS with client certificates, and the ways they are refused.
// Debian packages: libnbd-bin, python3-libnbd, qemu-utils.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { findCommand } from '../native/helpers/loop';
import { RawClient } from './helpers/raw-client';
import {
  captureLogger, CBT_BLOCK_SIZE, connectReady, EXPORT_NAME, EXPORT_SIZE, makeFixture, removeFixture, run, startServer, type Fixture,
  type LogRecord, type Running,
} from './helpers/server';

/** nbdsh runs `python3` from PATH; libnbd's module is in the system Python, whatever else PATH holds. */
const SYSTEM_PATH = `/usr/bin:/bin:${process.env.PATH ?? ''}`;

function missing(...commands: Array<[command: string, debianPackage: string]>): string | false {
  const absent = commands.filter(([command]) => findCommand(command) === undefined);
  return absent.length > 0 ? `not installed: ${absent.map(([command, pkg]) => `${command} (Debian package ${pkg})`).join(', ')}` : false;
}

const libnbd = missing(['nbdinfo', 'libnbd-bin'], ['nbdcopy', 'libnbd-bin']);
const nbdsh = missing(['nbdsh', 'python3-libnbd']);
const qemuImg = missing(['qemu-img', 'qemu-utils']);

const encodedName = encodeURIComponent(EXPORT_NAME);

/** Extents in nbdinfo --map --json form: what the fixture's CBT stamps (1 2 3 0 3 3 2 0...) say, computed here from the definition. */
function expectedDirtyMap(since: number, map: Buffer, snapshot: number): Array<{ offset: number; length: number; type: number }> {
  const out: Array<{ offset: number; length: number; type: number }> = [];
  for (let block = 0; block < map.length; block++) {
    const type = map[block] > since && map[block] <= snapshot ? 1 : 0;
    const last = out.at(-1);
    if (last !== undefined && last.type === type) last.length += CBT_BLOCK_SIZE;
    else out.push({ offset: block * CBT_BLOCK_SIZE, length: CBT_BLOCK_SIZE, type });
  }
  return out;
}

describe('NBD with Debian clients', () => {
  let fixture: Fixture;
  let server: Running;
  let records: LogRecord[];
  let uri: string;

  before(async () => {
    fixture = makeFixture();
    fixture.registry.add({ name: '1002/vdb', file: fixture.imageFile, description: 'second disk' });
    const logger = captureLogger();
    records = logger.records;
    server = await startServer(fixture, { log: logger.log });
    uri = `nbds://127.0.0.1:${server.port}/${encodedName}?tls-certificates=${fixture.certs.dir}`;
  });

  after(async () => {
    await server.server.close();
    removeFixture(fixture);
  });

  describe('nbdinfo', { skip: libnbd }, () => {
    it('lists the exports with their descriptions and contexts', async () => {
      const result = await run('nbdinfo', ['--list', '--json', `nbds://127.0.0.1:${server.port}?tls-certificates=${fixture.certs.dir}`]);
      assert.equal(result.code, 0, result.stderr);
      const listing = JSON.parse(result.stdout) as { exports: Array<Record<string, unknown>>; TLS: boolean };
      assert.equal(listing.TLS, true);
      const byName = new Map(listing.exports.map((entry) => [entry['export-name'], entry]));
      assert.deepEqual([...byName.keys()].sort(), [EXPORT_NAME, '1002/vdb']);
      const main = byName.get(EXPORT_NAME)!;
      assert.equal(main['export-size'], EXPORT_SIZE);
      assert.equal(main.description, `snapshot image ${EXPORT_NAME}`);
      assert.equal(main.is_read_only, true);
      assert.equal(main.can_multi_conn, true);
      assert.equal(main.block_size_minimum, 512);
      assert.equal(main.block_size_maximum, 32 * 1024 * 1024);
      assert.deepEqual(main.contexts, ['base:allocation', 'qemu:dirty-bitmap:since-1', 'qemu:dirty-bitmap:since-2']);
      assert.equal(byName.get('1002/vdb')!.description, 'second disk');
    });

    it('maps base:allocation as all data', async () => {
      const result = await run('nbdinfo', ['--map', '--json', uri]);
      assert.equal(result.code, 0, result.stderr);
      assert.deepEqual(JSON.parse(result.stdout), [{ offset: 0, length: EXPORT_SIZE, type: 0, description: 'data' }]);
    });

    for (const since of [1, 2]) {
      it(`maps qemu:dirty-bitmap:since-${since} as the CBT map says`, async () => {
        const result = await run('nbdinfo', [`--map=qemu:dirty-bitmap:since-${since}`, '--json', uri]);
        assert.equal(result.code, 0, result.stderr);
        const { map, snapshotNumber } = fixture.registry.get(EXPORT_NAME)!.cbt;
        const extents = (JSON.parse(result.stdout) as Array<{ offset: number; length: number; type: number }>)
          .map(({ offset, length, type }) => ({ offset, length, type }));
        assert.deepEqual(extents, expectedDirtyMap(since, map, snapshotNumber));
      });
    }

    it('fails without TLS: every option is refused until STARTTLS', async () => {
      const result = await run('nbdinfo', [`nbd://127.0.0.1:${server.port}/${encodedName}`]);
      assert.notEqual(result.code, 0);
      assert.doesNotMatch(result.stdout, /export-size/);
    });

    it('fails with a client certificate from another CA', async () => {
      const other = makeFixture();
      try {
        const result = await run('nbdinfo', [`nbds://127.0.0.1:${server.port}/${encodedName}?tls-certificates=${other.certs.dir}`]);
        assert.notEqual(result.code, 0);
        assert.match(result.stderr, /tls|certificate|gnutls/i);
      } finally {
        removeFixture(other);
      }
    });

    it('fails without a client certificate', async () => {
      const caOnly = path.join(fixture.dir, 'ca-only');
      fs.mkdirSync(caOnly, { recursive: true });
      fs.copyFileSync(fixture.certs.caCert, path.join(caOnly, 'ca-cert.pem'));
      const result = await run('nbdinfo', [`nbds://127.0.0.1:${server.port}/${encodedName}?tls-certificates=${caOnly}`]);
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, /tls|alert/i);
    });

    it('fails on an unknown export', async () => {
      const result = await run('nbdinfo', [`nbds://127.0.0.1:${server.port}/nope?tls-certificates=${fixture.certs.dir}`]);
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, /nope/);
    });

    it('takes the slot of a connection stuck in its handshake, and is refused while every slot serves a client', async () => {
      const limited = await startServer(fixture, { maxConnections: 2 });
      const size = (): ReturnType<typeof run> =>
        run('nbdinfo', ['--size', `nbds://127.0.0.1:${limited.port}/${encodedName}?tls-certificates=${fixture.certs.dir}`]);
      try {
        const attached = [await connectReady(limited.port, { tls: fixture.certs })];
        const lingering = await RawClient.connect(limited.port);
        await lingering.readGreeting();
        const served = await size();
        assert.equal(served.code, 0, served.stderr);
        assert.equal(served.stdout.trim(), String(EXPORT_SIZE));
        assert.equal((await lingering.untilClosed()).length, 0, 'the lingering handshake gave its slot away');
        attached.push(await connectReady(limited.port, { tls: fixture.certs }));
        assert.notEqual((await size()).code, 0);
        for (const client of attached) client.destroy();
      } finally {
        await limited.server.close();
      }
    });

    it('works in plaintext on loopback when TLS is off', async () => {
      const plain = await startServer(fixture, { tls: { mode: 'off' } });
      try {
        const result = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${plain.port}/${encodedName}`]);
        assert.equal(result.code, 0, result.stderr);
        assert.equal(result.stdout.trim(), String(EXPORT_SIZE));
      } finally {
        await plain.server.close();
      }
    });

    it('works over the Unix socket with TLS', async () => {
      const socketPath = path.join(fixture.dir, 'clients.sock');
      const local = await startServer(fixture, { unixSocket: socketPath });
      try {
        const result = await run('nbdinfo', ['--size', `nbds+unix:///${encodedName}?socket=${socketPath}&tls-certificates=${fixture.certs.dir}`]);
        assert.equal(result.code, 0, result.stderr);
        assert.equal(result.stdout.trim(), String(EXPORT_SIZE));
      } finally {
        await local.server.close();
      }
    });
  });

  describe('nbdcopy', { skip: libnbd }, () => {
    it('copies the image byte for byte over several connections', async () => {
      const attachedBefore = records.filter((record) => record.msg === 'NBD export attached').length;
      const target = path.join(fixture.dir, 'nbdcopy.raw');
      const result = await run('nbdcopy', ['--connections=4', '--threads=4', uri, target]);
      assert.equal(result.code, 0, result.stderr);
      assert.ok(fs.readFileSync(target).equals(fixture.image));
      const attached = records.filter((record) => record.msg === 'NBD export attached').length - attachedBefore;
      assert.ok(attached >= 4, `${attached} connections: multi-conn was used`);
    });
  });

  describe('nbdsh', { skip: nbdsh }, () => {
    const script = (target: string): string => `
import json, nbd
uri, certs = ${JSON.stringify(target)}, ${JSON.stringify(fixture.certs.dir)}
def handle(request_block_size=True, structured=True, contexts=()):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(certs)
    h.set_request_block_size(request_block_size)
    h.set_request_structured_replies(structured)
    for context in contexts:
        h.add_meta_context(context)
    # Let malformed requests reach the server instead of being stopped by libnbd.
    h.set_strict_mode(0)
    h.connect_uri(uri)
    return h
def errno_of(call):
    try:
        call()
        return 'ok'
    except nbd.Error as e:
        return e.errno
out = {}
h = handle(contexts=['base:allocation', 'qemu:dirty-bitmap:since-2'])
size = h.get_size()
out['size'] = size
out['block_size'] = [h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM)]
out['flags'] = [h.is_read_only(), h.can_multi_conn(), h.can_cache(), h.can_df(), h.can_flush(), h.can_trim(), h.can_zero()]
out['aligned'] = h.pread(8192, 4096).hex()
out['unaligned_after_agreeing'] = errno_of(lambda: h.pread(3, 1))
out['past_end'] = errno_of(lambda: h.pread(512, size))
out['write'] = errno_of(lambda: h.pwrite(b'x' * 512, 0))
out['trim'] = errno_of(lambda: h.trim(512, 0))
out['zero'] = errno_of(lambda: h.zero(512, 0))
out['flush'] = errno_of(lambda: h.flush())
out['cache'] = errno_of(lambda: h.cache(65536, 0))
out['cache_past_end'] = errno_of(lambda: h.cache(512, size))
extents = {}
def collect(context, offset, entries, error):
    extents[context] = list(entries)
    return 0
h.block_status(size, 0, collect)
out['extents'] = extents
out['block_status_past_end'] = errno_of(lambda: h.block_status(512, size, collect))
out['still_reads'] = h.pread(512, 0).hex()
h.shutdown()
simple = handle(request_block_size=False, structured=False)
out['unaligned_simple'] = simple.pread(3, 1).hex()
out['past_end_simple'] = errno_of(lambda: simple.pread(1, size))
out['block_status_simple'] = errno_of(lambda: simple.block_status(512, 0, collect))
simple.shutdown()
print(json.dumps(out))
`;

    it('checks the protocol edge cases through libnbd', async () => {
      const result = await run('nbdsh', ['-c', script(`nbds://127.0.0.1:${server.port}/${encodedName}`)], { env: { PATH: SYSTEM_PATH } });
      assert.equal(result.code, 0, result.stderr);
      const out = JSON.parse(result.stdout) as Record<string, unknown>;
      const image = fixture.image;
      // libnbd names the errno of a failed command.
      const EINVAL = 'EINVAL';
      const EPERM = 'EPERM';
      assert.equal(out.size, EXPORT_SIZE);
      assert.deepEqual(out.block_size, [512, 4096, 32 * 1024 * 1024]);
      assert.deepEqual(out.flags, [true, true, true, true, false, false, false]);
      assert.equal(out.aligned, image.subarray(4096, 4096 + 8192).toString('hex'));
      assert.equal(out.unaligned_after_agreeing, EINVAL);
      assert.equal(out.past_end, EINVAL);
      assert.equal(out.write, EPERM);
      assert.equal(out.trim, EPERM);
      assert.equal(out.zero, EPERM);
      assert.equal(out.flush, EINVAL);
      assert.equal(out.cache, 'ok');
      assert.equal(out.cache_past_end, EINVAL);
      assert.deepEqual(out.extents, {
        'base:allocation': [EXPORT_SIZE, 0],
        // Stamps 1 2 3 0 3 3 2 0...: changed after snapshot 2 are blocks 2, 4 and 5.
        'qemu:dirty-bitmap:since-2': [2 * CBT_BLOCK_SIZE, 0, CBT_BLOCK_SIZE, 1, CBT_BLOCK_SIZE, 0, 2 * CBT_BLOCK_SIZE, 1,
          EXPORT_SIZE - 6 * CBT_BLOCK_SIZE, 0],
      });
      assert.equal(out.block_status_past_end, EINVAL);
      assert.equal(out.still_reads, image.subarray(0, 512).toString('hex'));
      assert.equal(out.unaligned_simple, image.subarray(1, 4).toString('hex'));
      assert.equal(out.past_end_simple, EINVAL);
      assert.equal(out.block_status_simple, EINVAL);
    });
  });

  describe('qemu-img', { skip: qemuImg }, () => {
    const tlsObject = (): string => `tls-creds-x509,id=tls0,endpoint=client,dir=${fixture.certs.dir}`;
    const nbdImage = (): string => `driver=nbd,host=127.0.0.1,port=${server.port},export=${EXPORT_NAME},tls-creds=tls0`;

    it('converts the export over TLS to an identical file', async () => {
      const target = path.join(fixture.dir, 'qemu.raw');
      const result = await run('qemu-img', ['convert', '-O', 'raw', '--object', tlsObject(), '--image-opts', nbdImage(), target]);
      assert.equal(result.code, 0, result.stderr);
      assert.ok(fs.readFileSync(target).equals(fixture.image));
    });

    it('compares the export over TLS as identical to the image', async () => {
      const result = await run('qemu-img', ['compare', '--object', tlsObject(), '--image-opts', nbdImage(),
        `driver=file,filename=${fixture.imageFile}`]);
      assert.equal(result.code, 0, result.stderr + result.stdout);
      assert.match(result.stdout, /identical/);
    });

    it('fails without TLS credentials', async () => {
      const result = await run('qemu-img', ['info', `nbd://127.0.0.1:${server.port}/${encodedName}`]);
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, /TLS/);
    });
  });
});
