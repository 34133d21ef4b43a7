// The allow-list on every door that serves disk data, through a whole agent configured with
// [api.tls] allowed_clients: REST and NBD (real clients and the raw one) admit the same
// certificate and refuse the same other certificate of the same CA.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Option, OptionReply } from '../../src/nbd/wire';
import { request } from '../api/helpers/server';
import { startE2eAgent, type E2eAgent } from '../e2e/helpers';
import { makeClientCerts, makeTestCerts, type ClientCerts, type TestCerts } from '../helpers/certs';
import { findCommand } from '../native/helpers/loop';
import { encodeInfoRequest, RawClient } from '../nbd/helpers/raw-client';
import { run } from '../nbd/helpers/server';

const MiB = 1024 * 1024;
const libnbd = findCommand('nbdinfo') === undefined || findCommand('nbdcopy') === undefined ? 'not installed: nbdinfo, nbdcopy (Debian package libnbd-bin)' : false;

describe('allow-list on both doors', { timeout: 120_000 }, () => {
  let dir: string;
  let certs: TestCerts;
  let listed: ClientCerts;
  let stranger: ClientCerts;
  let e2e: E2eAgent;
  let snapshotId: string;
  let exportName: string;
  let image: Buffer;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-allow-list-'));
    certs = makeTestCerts(dir);
    // The certificate the e2e helper's own requests use is listed; so is this one.
    listed = makeClientCerts(certs, 'listed', '/CN=listed');
    stranger = makeClientCerts(certs, 'stranger', '/CN=stranger');
    e2e = await startE2eAgent({ disks: 1, diskSize: 8 * MiB, certsDir: certs.dir, allowedClients: ['CN=test client', 'CN=listed'] });
    image = fs.readFileSync(e2e.disks[0]);
    snapshotId = (await e2e.json<{ snapshot_id: string }>('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] })).snapshot_id;
    exportName = `${snapshotId}/disk0`;
  });

  after(async () => {
    await e2e.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const nbdUri = (identity: ClientCerts, name = ''): string =>
    `${e2e.agent.nbdUrl}/${encodeURIComponent(name)}?tls-certificates=${identity.dir}`;

  async function rest(identity: ClientCerts, route: string): Promise<number> {
    const { port, pathname } = new URL(e2e.agent.apiUrl);
    const credentials = { cert: fs.readFileSync(identity.cert, 'utf8'), key: fs.readFileSync(identity.key, 'utf8') };
    return (await request(Number(port), fs.readFileSync(certs.caCert, 'utf8'), `${pathname}${route}`, { credentials })).status;
  }

  it('REST: the listed certificate reads the image, the other one gets 403', async () => {
    assert.equal(await rest(listed, `/snapshots/${snapshotId}/consume/disk0`), 200);
    assert.equal(await rest(stranger, `/snapshots/${snapshotId}/consume/disk0`), 403);
    assert.equal(await rest(stranger, '/snapshots/'), 403);
  });

  it('NBD, raw client: the other certificate completes TLS and gets NBD_REP_ERR_POLICY, never an export', async () => {
    const port = Number(new URL(e2e.agent.nbdUrl).port);
    const client = await RawClient.connect(port);
    try {
      await client.start();
      await client.startTls(certs, { cert: stranger.cert, key: stranger.key });
      for (const [option, data] of [[Option.LIST, Buffer.alloc(0)], [Option.GO, encodeInfoRequest(exportName)]] as const) {
        const replies = await client.option(option, data);
        assert.deepEqual(replies.map((reply) => reply.type), [OptionReply.ERR_POLICY]);
        assert.doesNotMatch(replies[0].data.toString(), new RegExp(snapshotId));
      }
    } finally {
      client.destroy();
    }
  });

  describe('NBD, Debian clients', { skip: libnbd }, () => {
    it('nbdinfo lists and sizes the export for the listed certificate only', async () => {
      const served = await run('nbdinfo', ['--list', '--json', nbdUri(listed)]);
      assert.equal(served.code, 0, served.stderr);
      assert.match(served.stdout, new RegExp(exportName));
      const refused = await run('nbdinfo', ['--list', nbdUri(stranger)]);
      assert.notEqual(refused.code, 0);
      assert.doesNotMatch(refused.stdout + refused.stderr, new RegExp(snapshotId), 'no export name leaks');

      const size = await run('nbdinfo', ['--size', nbdUri(stranger, exportName)]);
      assert.notEqual(size.code, 0);
      assert.equal(size.stdout, '');
      assert.match(size.stderr, /server policy prevents NBD_OPT_GO/);
    });

    it('nbdcopy copies the image for the listed certificate, nothing for the other', async () => {
      const copy = path.join(dir, 'copy.raw');
      const served = await run('nbdcopy', [nbdUri(listed, exportName), copy]);
      assert.equal(served.code, 0, served.stderr);
      assert.ok(fs.readFileSync(copy).equals(image), 'the copy is the image');
      fs.rmSync(copy);
      const refused = await run('nbdcopy', [nbdUri(stranger, exportName), copy]);
      assert.notEqual(refused.code, 0);
      assert.ok(!fs.existsSync(copy) || fs.statSync(copy).size === 0, 'no data was copied');
    });
  });
});
