// The NBD server around the protocol: listeners (TCP and Unix socket), the connection limit,
// the TLS-off guard, and close() with connections in every phase.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ImageReader } from '../../src/core/image';
import { createNbdServer } from '../../src/nbd/server';
import { Command, NbdError, Option, OptionReply } from '../../src/nbd/wire';
import { GatedReader } from './helpers/fake-registry';
import { encodeInfoRequest, RawClient } from './helpers/raw-client';
import {
  captureLogger, connectReady, EXPORT_NAME, makeFixture, removeFixture, run, startServer, waitFor, type Fixture,
} from './helpers/server';

describe('NBD server', () => {
  let fixture: Fixture;

  before(() => {
    fixture = makeFixture();
  });

  after(() => {
    removeFixture(fixture);
  });

  it('beyond the limit, a new connection takes the oldest handshake\'s slot, and is closed at once when every slot serves a client', async () => {
    const { server, port } = await startServer(fixture, { tls: { mode: 'off' }, maxConnections: 2 });
    try {
      const first = await connectReady(port, {});
      const second = await RawClient.connect(port);
      await second.readGreeting();
      const third = await connectReady(port, {});
      assert.equal((await second.untilClosed()).length, 0, 'the handshake gave its slot to the newer connection');
      assert.equal(server.connectionCount, 2);
      const fourth = await RawClient.connect(port);
      assert.equal((await fourth.untilClosed()).length, 0, 'no greeting while both slots serve clients');
      first.sendRequest({ type: Command.DISC });
      await first.untilClosed();
      await waitFor(() => server.connectionCount === 1, 'the slot to free');
      const fifth = await RawClient.connect(port);
      await fifth.readGreeting();
      third.destroy();
      fifth.destroy();
    } finally {
      await server.close();
    }
  });

  it('keeps handshakes to their own few slots: the oldest gives way, attached clients stay', async () => {
    const { server, port } = await startServer(fixture, { tls: { mode: 'off' }, maxConnections: 8, maxHandshakes: 2 });
    try {
      const attached = await connectReady(port, {});
      const lingering = await Promise.all([RawClient.connect(port), RawClient.connect(port)]);
      for (const client of lingering) await client.readGreeting();
      const newest = await RawClient.connect(port);
      await newest.readGreeting();
      assert.equal((await lingering[0].untilClosed()).length, 0, 'the oldest handshake gave way');
      assert.equal(lingering[1].isClosed, false);
      attached.sendRequest({ type: Command.READ, offset: 0, length: 512 });
      assert.equal((await attached.readSimpleReply()).error, 0);
      await attached.read(512);
      for (const client of [attached, lingering[1], newest]) client.destroy();
    } finally {
      await server.close();
    }
  });

  it('closes promptly after closing a client that left bytes unread: nothing waits on a timer that does not keep the process alive', async () => {
    const result = await run(process.execPath, [path.join(__dirname, 'helpers', 'close-after-violation.js')]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, 'closed\n');
  });

  it('serves a Unix socket with the same TLS requirement, and removes the socket file on close', async () => {
    const socketPath = path.join(fixture.dir, 'nbd.sock');
    const { server } = await startServer(fixture, { unixSocket: socketPath });
    assert.ok(fs.statSync(socketPath).isSocket());
    assert.equal(fs.statSync(socketPath).mode & 0o777, 0o600);
    const plain = await RawClient.connect(socketPath);
    await plain.start();
    assert.equal((await plain.option(Option.LIST))[0].type, OptionReply.ERR_TLS_REQD);
    plain.destroy();
    const client = await connectReady(socketPath, { tls: fixture.certs });
    client.sendRequest({ type: Command.READ, offset: 0, length: 4096 });
    assert.equal((await client.readSimpleReply()).error, 0);
    assert.deepEqual(await client.read(4096), fixture.image.subarray(0, 4096));
    client.destroy();
    await server.close();
    assert.equal(fs.existsSync(socketPath), false);
  });

  it('replaces a stale socket file and refuses to replace anything else', async () => {
    const stale = path.join(fixture.dir, 'stale.sock');
    // A socket file whose server died without removing it.
    execFileSync('/usr/bin/python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', stale]);
    assert.ok(fs.statSync(stale).isSocket());
    const { server } = await startServer(fixture, { tls: { mode: 'off' }, unixSocket: stale });
    const client = await connectReady(stale, {});
    client.destroy();
    await server.close();

    const regular = path.join(fixture.dir, 'not-a-socket');
    fs.writeFileSync(regular, 'data');
    const refused = createNbdServer({ registry: fixture.registry, log: captureLogger().log, tls: { mode: 'off' }, bind: '127.0.0.1', port: 0,
      maxConnections: 1, unixSocket: regular });
    await assert.rejects(refused.listen(), /not a socket/);
    await refused.close();
    assert.equal(fs.readFileSync(regular, 'utf8'), 'data');
  });

  it('refuses TLS off on a non-loopback address, bad limits and bad PEM material', () => {
    const base = { registry: fixture.registry, log: captureLogger().log, port: 0, maxConnections: 4 };
    assert.throws(() => createNbdServer({ ...base, tls: { mode: 'off' }, bind: '0.0.0.0' }), /loopback/);
    assert.throws(() => createNbdServer({ ...base, tls: { mode: 'off' }, bind: '192.0.2.1' }), /loopback/);
    for (const bind of ['127.0.0.1', '127.8.9.10', '::1']) createNbdServer({ ...base, tls: { mode: 'off' }, bind });
    assert.throws(() => createNbdServer({ ...base, tls: { mode: 'off' }, bind: '127.0.0.1', maxConnections: 0 }), /maxConnections/);
    assert.throws(() => createNbdServer({ ...base, bind: '0.0.0.0',
      tls: { mode: 'require', certificate: 'junk', key: 'junk', caCertificate: 'junk' } }));
  });

  it('says in the log that TLS is off', async () => {
    const { log, records } = captureLogger();
    const { server } = await startServer(fixture, { tls: { mode: 'off' }, log });
    await server.close();
    assert.ok(records.some((record) => record.level === 40 && /TLS is off/.test(record.msg)));
    assert.ok(records.some((record) => record.msg === 'NBD server listening' && record.tls === 'off'));
  });

  it('reports a port already taken', async () => {
    const first = await startServer(fixture, { tls: { mode: 'off' } });
    const second = createNbdServer({ registry: fixture.registry, log: captureLogger().log, tls: { mode: 'off' }, bind: '127.0.0.1',
      port: first.port, maxConnections: 1 });
    await assert.rejects(second.listen(), /EADDRINUSE/);
    await second.close();
    await first.server.close();
  });

  it('closes every connection on close(): ESHUTDOWN for requests in flight, handshakes cut', async () => {
    let gated: GatedReader | undefined;
    fixture.registry.wrapReader = (reader: ImageReader) => (gated = new GatedReader(reader));
    const { server, port } = await startServer(fixture, { tls: { mode: 'off' } });
    try {
      const serving = await connectReady(port, {});
      gated!.hold(0);
      serving.sendRequest({ type: Command.READ, cookie: 1n, offset: 0, length: 512 });
      await waitFor(() => gated!.requested.includes(0), 'the read to start');
      const negotiating = await RawClient.connect(port);
      await negotiating.start();
      assert.equal((await negotiating.option(Option.INFO, encodeInfoRequest(EXPORT_NAME))).at(-1)!.type, OptionReply.ACK);

      const closing = server.close();
      assert.deepEqual(await serving.readSimpleReply(), { error: NbdError.ESHUTDOWN, cookie: 1n });
      await negotiating.untilClosed();
      gated!.release(0);
      await serving.untilClosed();
      await closing;
      assert.equal(server.connectionCount, 0);
      assert.equal(fixture.registry.openReaders, 0);
      await assert.rejects(RawClient.connect(port), /ECONNREFUSED/);
    } finally {
      fixture.registry.wrapReader = null;
      await server.close();
    }
  });
});
