// The handshake byte by byte with a raw client: the greeting, TLS enforcement, every option
// and its malformed forms, and the closes for what cannot be answered.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  ClientFlag, Info, NBD_MAGIC, OLDSTYLE_MAGIC, Option, OPTION_MAGIC, OptionReply, TransmissionFlag,
} from '../../src/nbd/wire';
import { MAX_OPTIONS_BEFORE_ADMISSION } from '../../src/nbd/handshake';
import { createNbdServer } from '../../src/nbd/server';
import { makeClientCerts, type ClientCerts } from '../helpers/certs';
import { encodeInfoRequest, encodeMetaContextQuery, RawClient, type OptionReplyMessage } from './helpers/raw-client';
import {
  captureLogger, connectReady, EXPORT_NAME, EXPORT_SIZE, makeFixture, removeFixture, startServer, waitFor, type Fixture,
  type Running,
} from './helpers/server';

const READ_ONLY_FLAGS = TransmissionFlag.HAS_FLAGS | TransmissionFlag.READ_ONLY | TransmissionFlag.SEND_CACHE | TransmissionFlag.CAN_MULTI_CONN;

function replyTypes(replies: OptionReplyMessage[]): number[] {
  return replies.map((reply) => reply.type);
}

function infoOf(replies: OptionReplyMessage[], type: number): Buffer | undefined {
  return replies.find((reply) => reply.type === OptionReply.INFO && reply.data.readUInt16BE(0) === type)?.data;
}

describe('NBD handshake', () => {
  let fixture: Fixture;
  let secure: Running;
  let plain: Running;
  const logs = captureLogger();

  before(async () => {
    fixture = makeFixture();
    fixture.registry.add({ name: '1002/vdb', file: fixture.imageFile, description: 'second disk' });
    secure = await startServer(fixture, { log: logs.log, handshakeTimeoutMs: 1500 });
    plain = await startServer(fixture, { tls: { mode: 'off' } });
  });

  after(async () => {
    await secure.server.close();
    await plain.server.close();
    removeFixture(fixture);
  });

  /** A TLS client past STARTTLS, ready for options. */
  async function tlsClient(): Promise<RawClient> {
    const client = await RawClient.connect(secure.port);
    await client.start();
    await client.startTls(fixture.certs);
    return client;
  }

  /** The server refuses the client's TLS identity; with TLS 1.3 that shows only after the client's handshake is done. */
  async function assertTlsRefused(client: RawClient, identity: { cert: string; key: string }): Promise<void> {
    await assert.rejects(async () => {
      await client.upgrade(fixture.certs, identity);
      client.sendOption(Option.LIST);
      await client.readOptionReply();
    });
  }

  async function assertClosedByServer(client: RawClient): Promise<void> {
    await client.untilClosed();
    assert.ok(client.isClosed);
  }

  describe('greeting and client flags', () => {
    it('greets in fixed newstyle, never oldstyle', async () => {
      const client = await RawClient.connect(secure.port);
      const greeting = await client.readGreeting();
      assert.equal(greeting.magic, NBD_MAGIC);
      assert.equal(greeting.optionMagic, OPTION_MAGIC);
      assert.notEqual(greeting.optionMagic, OLDSTYLE_MAGIC);
      assert.equal(greeting.flags, 3);
      client.destroy();
    });

    it('closes on unknown client flags', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start(ClientFlag.FIXED_NEWSTYLE | 0x80);
      await assertClosedByServer(client);
    });

    it('closes a client that does not speak fixed newstyle', async () => {
      const client = await RawClient.connect(plain.port);
      await client.start(0);
      await assertClosedByServer(client);
    });

    it('closes on a wrong option magic', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      client.sendOption(Option.LIST, Buffer.alloc(0), { magic: 0x1234n });
      await assertClosedByServer(client);
    });

    it('closes on an option longer than any real one, without reading it', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      client.sendOption(Option.GO, Buffer.alloc(0), { length: 0x7fffffff });
      await assertClosedByServer(client);
    });

    it('closes on garbage instead of a handshake', async () => {
      const client = await RawClient.connect(secure.port);
      await client.readGreeting();
      client.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
      await assertClosedByServer(client);
    });

    it('closes a silent client (an oldstyle client waiting for its size) after the handshake timeout', async () => {
      const client = await RawClient.connect(secure.port);
      const greeting = await client.readGreeting();
      assert.notEqual(greeting.optionMagic, OLDSTYLE_MAGIC, 'an oldstyle client sees this is no oldstyle server');
      const started = Date.now();
      await assertClosedByServer(client);
      assert.ok(Date.now() - started >= 1000, 'closed by the timeout, not at once');
      assert.ok(logs.records.some((record) => record.msg === 'NBD handshake aborted' && String(record.reason).includes('timed out')));
    });

    it('forgets clients that leave mid-handshake', async () => {
      const client = await RawClient.connect(secure.port);
      await client.readGreeting();
      client.destroy();
      await waitFor(() => secure.server.connectionCount === 0, 'the connection to be released');
    });
  });

  describe('before TLS (TLS required)', () => {
    it('answers every option but STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      for (const option of [Option.LIST, Option.INFO, Option.GO, Option.STRUCTURED_REPLY, Option.LIST_META_CONTEXT,
        Option.SET_META_CONTEXT, 99]) {
        const replies = await client.option(option, option === Option.GO ? encodeInfoRequest(EXPORT_NAME) : Buffer.alloc(0));
        assert.deepEqual(replyTypes(replies), [OptionReply.ERR_TLS_REQD], `option ${option}`);
        assert.equal(replies[0].option, option);
        assert.match(replies[0].data.toString(), /TLS is required/);
      }
      const [abort] = await client.option(Option.ABORT);
      assert.equal(abort.type, OptionReply.ACK);
      await assertClosedByServer(client);
    });

    it('closes on NBD_OPT_EXPORT_NAME, which cannot be refused', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      client.sendOption(Option.EXPORT_NAME, Buffer.from(EXPORT_NAME));
      const rest = await client.untilClosed();
      assert.equal(rest.length, 0, 'nothing about the export was sent');
    });

    it('refuses NBD_OPT_STARTTLS with data', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      assert.deepEqual(replyTypes(await client.option(Option.STARTTLS, Buffer.from('x'))), [OptionReply.ERR_INVALID]);
      client.destroy();
    });

    it('closes when the client sends more before the STARTTLS reply', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      client.sendOption(Option.STARTTLS);
      client.sendOption(Option.LIST);
      const rest = await client.untilClosed();
      assert.ok(rest.length <= 20, 'at most the STARTTLS reply');
    });

    it('closes when the TLS handshake fails: a client certificate from another CA', async () => {
      const other = makeFixture();
      try {
        const client = await RawClient.connect(secure.port);
        await client.start();
        const [reply] = await client.option(Option.STARTTLS);
        assert.equal(reply.type, OptionReply.ACK);
        await assertTlsRefused(client, { cert: other.certs.clientCert, key: other.certs.clientKey });
      } finally {
        removeFixture(other);
      }
      await waitFor(() => secure.server.connectionCount === 0, 'the connection to be released');
    });

    it('closes when the TLS handshake fails: no client certificate', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      await client.option(Option.STARTTLS);
      await assertTlsRefused(client, { cert: '', key: '' });
    });

    it('closes when the client speaks plaintext after STARTTLS', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      await client.option(Option.STARTTLS);
      client.sendOption(Option.LIST);
      await assertClosedByServer(client);
    });
  });

  describe('after TLS', () => {
    it('refuses a second STARTTLS', async () => {
      const client = await tlsClient();
      assert.deepEqual(replyTypes(await client.option(Option.STARTTLS)), [OptionReply.ERR_INVALID]);
      client.destroy();
    });

    it('lists the exports with their descriptions', async () => {
      const client = await tlsClient();
      const replies = await client.option(Option.LIST);
      assert.deepEqual(replyTypes(replies), [OptionReply.SERVER, OptionReply.SERVER, OptionReply.ACK]);
      const entries = replies.slice(0, 2).map(({ data }) => {
        const length = data.readUInt32BE(0);
        return [data.subarray(4, 4 + length).toString(), data.subarray(4 + length).toString()];
      });
      assert.deepEqual(entries, [[EXPORT_NAME, `snapshot image ${EXPORT_NAME}`], ['1002/vdb', 'second disk']]);
      assert.deepEqual(replyTypes(await client.option(Option.LIST, Buffer.from('x'))), [OptionReply.ERR_INVALID]);
      client.destroy();
    });

    it('answers NBD_OPT_INFO with the export, and the name, description and block size asked for', async () => {
      const client = await tlsClient();
      const bare = await client.option(Option.INFO, encodeInfoRequest(EXPORT_NAME));
      assert.deepEqual(replyTypes(bare), [OptionReply.INFO, OptionReply.ACK]);
      const exportInfo = infoOf(bare, Info.EXPORT)!;
      assert.equal(exportInfo.length, 12);
      assert.equal(Number(exportInfo.readBigUInt64BE(2)), EXPORT_SIZE);
      assert.equal(exportInfo.readUInt16BE(10), READ_ONLY_FLAGS);

      const full = await client.option(Option.INFO, encodeInfoRequest(EXPORT_NAME, [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE, 999]));
      assert.deepEqual(replyTypes(full), [OptionReply.INFO, OptionReply.INFO, OptionReply.INFO, OptionReply.INFO, OptionReply.ACK]);
      assert.equal(infoOf(full, Info.NAME)!.subarray(2).toString(), EXPORT_NAME);
      assert.equal(infoOf(full, Info.DESCRIPTION)!.subarray(2).toString(), `snapshot image ${EXPORT_NAME}`);
      const blockSize = infoOf(full, Info.BLOCK_SIZE)!;
      assert.deepEqual([blockSize.readUInt32BE(2), blockSize.readUInt32BE(6), blockSize.readUInt32BE(10)], [512, 4096, 32 * 1024 * 1024]);
      assert.equal(fixture.registry.openReaders, 0, 'NBD_OPT_INFO closed the reader it opened');
      client.destroy();
    });

    it('refuses NBD_OPT_INFO and NBD_OPT_GO for unknown exports, the default export included', async () => {
      const client = await tlsClient();
      for (const option of [Option.INFO, Option.GO]) {
        for (const name of ['nope', '']) {
          const replies = await client.option(option, encodeInfoRequest(name));
          assert.deepEqual(replyTypes(replies), [OptionReply.ERR_UNKNOWN]);
        }
      }
      client.destroy();
    });

    it('refuses malformed NBD_OPT_INFO and NBD_OPT_GO payloads and stays usable', async () => {
      const client = await tlsClient();
      const overrun = encodeInfoRequest(EXPORT_NAME);
      overrun.writeUInt32BE(999, 0);
      for (const option of [Option.INFO, Option.GO]) {
        for (const data of [Buffer.alloc(3), overrun, encodeInfoRequest(EXPORT_NAME, [1, 1]),
          Buffer.concat([encodeInfoRequest(EXPORT_NAME), Buffer.alloc(1)])]) {
          assert.deepEqual(replyTypes(await client.option(option, data)), [OptionReply.ERR_INVALID]);
        }
      }
      assert.deepEqual(replyTypes(await client.option(Option.INFO, encodeInfoRequest(EXPORT_NAME))), [OptionReply.INFO, OptionReply.ACK]);
      client.destroy();
    });

    it('answers NBD_OPT_STRUCTURED_REPLY, refuses it with data, and offers DF once it is on', async () => {
      const client = await tlsClient();
      assert.deepEqual(replyTypes(await client.option(Option.STRUCTURED_REPLY, Buffer.from('x'))), [OptionReply.ERR_INVALID]);
      assert.deepEqual(replyTypes(await client.option(Option.STRUCTURED_REPLY)), [OptionReply.ACK]);
      const info = await client.option(Option.INFO, encodeInfoRequest(EXPORT_NAME));
      assert.equal(infoOf(info, Info.EXPORT)!.readUInt16BE(10), READ_ONLY_FLAGS | TransmissionFlag.SEND_DF);
      client.destroy();
    });

    it('answers unknown options with NBD_REP_ERR_UNSUP', async () => {
      const client = await tlsClient();
      const replies = await client.option(4, Buffer.from('peek'));
      assert.deepEqual(replyTypes(replies), [OptionReply.ERR_UNSUP]);
      assert.equal(replies[0].option, 4);
      client.destroy();
    });

    it('acknowledges NBD_OPT_ABORT (data ignored) and closes', async () => {
      const client = await tlsClient();
      assert.deepEqual(replyTypes(await client.option(Option.ABORT, Buffer.from('bye'))), [OptionReply.ACK]);
      await assertClosedByServer(client);
    });
  });

  describe('metadata context options', () => {
    const names = (replies: OptionReplyMessage[]): string[] =>
      replies.filter((reply) => reply.type === OptionReply.META_CONTEXT).map((reply) => reply.data.subarray(4).toString());
    const ids = (replies: OptionReplyMessage[]): number[] =>
      replies.filter((reply) => reply.type === OptionReply.META_CONTEXT).map((reply) => reply.data.readUInt32BE(0));

    it('lists the contexts with id 0: all of them, or those the queries name', async () => {
      const client = await tlsClient();
      const all = await client.option(Option.LIST_META_CONTEXT, encodeMetaContextQuery(EXPORT_NAME, []));
      assert.deepEqual(names(all), ['base:allocation', 'qemu:dirty-bitmap:since-1', 'qemu:dirty-bitmap:since-2']);
      assert.deepEqual(ids(all), [0, 0, 0]);
      assert.equal(all.at(-1)!.type, OptionReply.ACK);
      const bitmaps = await client.option(Option.LIST_META_CONTEXT, encodeMetaContextQuery(EXPORT_NAME, ['qemu:dirty-bitmap:']));
      assert.deepEqual(names(bitmaps), ['qemu:dirty-bitmap:since-1', 'qemu:dirty-bitmap:since-2']);
      const none = await client.option(Option.LIST_META_CONTEXT, encodeMetaContextQuery(EXPORT_NAME, ['x-unknown:thing']));
      assert.deepEqual(replyTypes(none), [OptionReply.ACK]);
      client.destroy();
    });

    it('refuses malformed queries, unknown exports, and SET before structured replies', async () => {
      const client = await tlsClient();
      for (const option of [Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT]) {
        assert.deepEqual(replyTypes(await client.option(option, Buffer.alloc(5))), [OptionReply.ERR_INVALID]);
        assert.deepEqual(replyTypes(await client.option(option, encodeMetaContextQuery(EXPORT_NAME, ['nocolon']))), [OptionReply.ERR_INVALID]);
        const trailing = Buffer.concat([encodeMetaContextQuery(EXPORT_NAME, ['base:allocation']), Buffer.alloc(2)]);
        assert.deepEqual(replyTypes(await client.option(option, trailing)), [OptionReply.ERR_INVALID]);
      }
      assert.deepEqual(replyTypes(await client.option(Option.SET_META_CONTEXT, encodeMetaContextQuery(EXPORT_NAME, ['base:allocation']))),
        [OptionReply.ERR_INVALID]);
      await client.option(Option.STRUCTURED_REPLY);
      for (const option of [Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT]) {
        assert.deepEqual(replyTypes(await client.option(option, encodeMetaContextQuery('nope', ['base:allocation']))),
          [OptionReply.ERR_UNKNOWN]);
      }
      client.destroy();
    });

    it('selects exact names with ids from 1, ignoring wildcards', async () => {
      const client = await tlsClient();
      await client.option(Option.STRUCTURED_REPLY);
      const replies = await client.option(Option.SET_META_CONTEXT,
        encodeMetaContextQuery(EXPORT_NAME, ['qemu:dirty-bitmap:since-2', 'base:', 'qemu:dirty-bitmap:', 'base:allocation', 'x-y:z']));
      assert.deepEqual(names(replies), ['base:allocation', 'qemu:dirty-bitmap:since-2']);
      assert.deepEqual(ids(replies), [1, 2]);
      assert.equal(replies.at(-1)!.type, OptionReply.ACK);
      client.destroy();
    });

  });

  describe('clients that will not stop', () => {
    it('closes a client that sends option after option before TLS', async () => {
      const client = await RawClient.connect(secure.port);
      await client.start();
      for (let i = 0; i < 100; i++) client.sendOption(Option.LIST);
      let refusals = 0;
      for (;;) {
        const reply = await client.readOptionReply().catch(() => null);
        if (reply === null) break;
        assert.equal(reply.type, OptionReply.ERR_TLS_REQD);
        refusals++;
      }
      assert.equal(refusals, MAX_OPTIONS_BEFORE_ADMISSION);
      assert.ok(client.isClosed);
    });

    it('closes a client that sends options without reading the replies, before they fill the server', async () => {
      const logged = captureLogger();
      const patient = await startServer(fixture, { tls: { mode: 'off' }, log: logged.log, handshakeTimeoutMs: 600_000 });
      try {
        const client = await RawClient.connect(patient.port);
        await client.start();
        client.stopReading();
        const list = Buffer.alloc(16);
        list.writeBigUInt64BE(OPTION_MAGIC, 0);
        list.writeUInt32BE(Option.LIST, 8);
        // Far more replies than the kernel buffers between us hold.
        client.write(Buffer.concat(Array.from({ length: 200_000 }, () => list)));
        await waitFor(() => patient.server.connectionCount === 0, 'the client to be closed', 60_000);
        assert.ok(logged.records.some((record) => /without reading the replies/.test(String(record.reason))));
        client.destroy();
      } finally {
        await patient.server.close();
      }
    });
  });

  describe('allow-list', () => {
    let listed: Running;
    let allowed: ClientCerts;
    let notAllowed: ClientCerts;

    before(async () => {
      allowed = makeClientCerts(fixture.certs, 'allowed', '/CN=allowed/O=Coriolis');
      notAllowed = makeClientCerts(fixture.certs, 'not-allowed', '/CN=not-allowed');
      listed = await startServer(fixture, { allowedClients: ['CN=allowed, O=Coriolis'], handshakeTimeoutMs: 1500 });
    });

    after(() => listed.server.close());

    async function clientAs(identity: ClientCerts): Promise<RawClient> {
      const client = await RawClient.connect(listed.port);
      await client.start();
      await client.startTls(fixture.certs, identity);
      return client;
    }

    it('serves a listed certificate', async () => {
      const client = await clientAs(allowed);
      const replies = await client.option(Option.GO, encodeInfoRequest(EXPORT_NAME));
      assert.equal(replies.at(-1)!.type, OptionReply.ACK);
      client.destroy();
    });

    it('answers a certificate of the same CA that is not listed NBD_REP_ERR_POLICY to every option: no export name, no data', async () => {
      const client = await clientAs(notAllowed);
      const received: Buffer[] = [];
      for (const [option, data] of [[Option.LIST, Buffer.alloc(0)], [Option.INFO, encodeInfoRequest(EXPORT_NAME)],
        [Option.STRUCTURED_REPLY, Buffer.alloc(0)], [Option.LIST_META_CONTEXT, encodeMetaContextQuery(EXPORT_NAME, [])],
        [Option.GO, encodeInfoRequest(EXPORT_NAME)], [Option.STARTTLS, Buffer.alloc(0)]] as const) {
        const replies = await client.option(option, data);
        assert.deepEqual(replyTypes(replies), [OptionReply.ERR_POLICY], `option ${option}`);
        assert.match(replies[0].data.toString(), /client certificate CN=not-allowed \(sha256 [0-9A-F:]+\) is not allowed/);
        received.push(replies[0].data);
      }
      client.sendOption(Option.EXPORT_NAME, Buffer.from(EXPORT_NAME));
      received.push(await client.untilClosed());
      const all = Buffer.concat(received).toString();
      assert.doesNotMatch(all, /1001|vda|1002|vdb|allowed, O=Coriolis/, 'neither export names nor the list leak');
    });

    it('is closed by the handshake deadline if it stays', async () => {
      const client = await clientAs(notAllowed);
      assert.equal((await client.untilClosed()).length, 0);
    });

    it('cannot be combined with TLS off', () => {
      assert.throws(() => createNbdServer({ registry: fixture.registry, log: logs.log, tls: { mode: 'off' }, bind: '127.0.0.1',
        port: 0, maxConnections: 1, allowedClients: ['CN=allowed'] }), /allow-list of client certificates needs TLS/);
    });
  });

  describe('TLS off', () => {
    it('refuses NBD_OPT_STARTTLS by policy and serves options in plaintext', async () => {
      const client = await RawClient.connect(plain.port);
      await client.start();
      const [reply] = await client.option(Option.STARTTLS);
      assert.equal(reply.type, OptionReply.ERR_POLICY);
      assert.deepEqual(replyTypes(await client.option(Option.INFO, encodeInfoRequest(EXPORT_NAME))), [OptionReply.INFO, OptionReply.ACK]);
      client.destroy();
    });
  });

  describe('entering transmission', () => {
    it('NBD_OPT_GO ends with an ACK and no padding', async () => {
      const client = await tlsClient();
      const replies = await client.option(Option.GO, encodeInfoRequest(EXPORT_NAME, [Info.NAME]));
      assert.deepEqual(replyTypes(replies), [OptionReply.INFO, OptionReply.INFO, OptionReply.ACK]);
      assert.equal(fixture.registry.openReaders, 1);
      client.sendRequest({ type: 2 });
      await assertClosedByServer(client);
      await waitFor(() => fixture.registry.openReaders === 0, 'the reader to be closed');
    });

    it('NBD_OPT_EXPORT_NAME answers size and flags, with or without the 124 zeroes', async () => {
      for (const [flags, length] of [[ClientFlag.FIXED_NEWSTYLE, 134], [ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES, 10]] as const) {
        const client = await RawClient.connect(plain.port);
        await client.start(flags);
        client.sendOption(Option.EXPORT_NAME, Buffer.from(EXPORT_NAME));
        const reply = await client.read(length);
        assert.equal(Number(reply.readBigUInt64BE(0)), EXPORT_SIZE);
        assert.equal(reply.readUInt16BE(8), READ_ONLY_FLAGS);
        client.sendRequest({ type: 2 });
        await assertClosedByServer(client);
      }
    });

    it('NBD_OPT_EXPORT_NAME closes on an unknown or malformed name', async () => {
      for (const name of [Buffer.from('nope'), Buffer.from([0xff, 0xfe])]) {
        const client = await RawClient.connect(plain.port);
        await client.start();
        client.sendOption(Option.EXPORT_NAME, name);
        assert.equal((await client.untilClosed()).length, 0);
      }
    });

    it('refuses NBD_OPT_GO for an export removed meanwhile', async () => {
      fixture.registry.add({ name: '1003/gone', file: fixture.imageFile });
      const client = await tlsClient();
      fixture.registry.remove('1003/gone');
      assert.deepEqual(replyTypes(await client.option(Option.GO, encodeInfoRequest('1003/gone'))), [OptionReply.ERR_UNKNOWN]);
      client.destroy();
    });

    it('closes, and closes the reader, when the handshake times out while the export opens', async () => {
      const slow = await startServer(fixture, { handshakeTimeoutMs: 1000 });
      const open = fixture.registry.open.bind(fixture.registry);
      fixture.registry.open = async (name) => {
        await new Promise((resolve) => setTimeout(resolve, 1500));
        return open(name);
      };
      try {
        const client = await RawClient.connect(slow.port);
        await client.start();
        await client.startTls(fixture.certs);
        client.sendOption(Option.GO, encodeInfoRequest(EXPORT_NAME));
        await assertClosedByServer(client);
        await waitFor(() => slow.server.connectionCount === 0 && fixture.registry.openReaders === 0, 'the reader to be closed');
      } finally {
        fixture.registry.open = open;
        await slow.server.close();
      }
    });

    it('reaches transmission through the helper used by the other tests', async () => {
      const client = await connectReady(secure.port, { tls: fixture.certs, structured: true, metaContexts: ['base:allocation'] });
      client.sendRequest({ type: 2 });
      await assertClosedByServer(client);
    });
  });
});
