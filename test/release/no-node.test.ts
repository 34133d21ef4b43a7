// The release on a machine without Node.js: a scratch root that is this machine minus its Node
// and minus the checkout. Unpacked there, the tarball runs `version`, `gen-certs`,
// `check-config` and the demo, and an image is copied from the demo with the release's own `pull`.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import { after, before, describe, test } from 'node:test';
import { ScratchRoot } from '../helpers/scratch-root';
import { checkoutCommit, ensureRelease, NAME, NODE_PATHS, pullDemoDisk, startDemo, unpack, VERSION } from './artifacts';

const AGENT = `/opt/${NAME}/bin/coriolis-snapshot-agent`;

function getJson(url: string, certs: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    https.get(url, {
      ca: fs.readFileSync(`${certs}/ca-cert.pem`), cert: fs.readFileSync(`${certs}/client-cert.pem`), key: fs.readFileSync(`${certs}/client-key.pem`),
    }, (response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => (response.statusCode === 200 ? resolve(JSON.parse(body) as Record<string, unknown>) : reject(new Error(`${url}: ${response.statusCode} ${body}`))));
    }).on('error', reject);
  });
}

describe('the release where no Node.js is installed', { timeout: 1_500_000 }, () => {
  let root: ScratchRoot;
  before(() => {
    ensureRelease();
    root = ScratchRoot.create({ remove: NODE_PATHS, volumes: ['/srv/demo'] });
    unpack(root.path('/opt'));
  });
  after(() => root?.close());

  test('the root has no node', () => {
    assert.notEqual(root.run(['sh', '-c', 'command -v node || command -v nodejs']).status, 0);
  });

  test('version', () => {
    assert.equal(root.ok([AGENT, 'version']).split('\n')[0], VERSION);
  });

  test('gen-certs, then check-config on a config that uses them', () => {
    root.ok([AGENT, 'gen-certs', '--out', '/etc/csa/certs', '--hosts', 'localhost,127.0.0.1']);
    for (const file of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem']) {
      assert.ok(fs.existsSync(root.path(`/etc/csa/certs/${file}`)), file);
    }
    fs.mkdirSync(root.path('/srv/csa/store'), { recursive: true });
    fs.writeFileSync(root.path('/srv/csa/disk0.img'), Buffer.alloc(16 << 20));
    fs.writeFileSync(root.path('/etc/csa/config.toml'), `engine = "simulated"
database_file = "/run/csa/agent.db"
snapstore_destinations = ["/srv/csa/store"]
[api]
bind = "127.0.0.1"
port = 9999
[api.tls]
certificate = "/etc/csa/certs/server-cert.pem"
key = "/etc/csa/certs/server-key.pem"
ca_certificate = "/etc/csa/certs/ca-cert.pem"
[simulated]
disks = ["/srv/csa/disk0.img"]
image_dir = "/srv/csa/engine"
`);
    assert.match(root.ok([AGENT, 'check-config', '--config', '/etc/csa/config.toml']), /config\.toml: OK \(engine simulated\)/);
  });

  test('the demo serves, says which release it is, and `pull` copies its disk byte for byte', async (t) => {
    const demo = await startDemo(root, AGENT);
    t.after(() => demo.process.kill('SIGKILL'));
    const { summary } = demo;
    const certs = root.path('/srv/demo/certs');
    const info = await getJson(`${summary.api}/systeminfo`, certs);
    assert.equal(info.agent_version, VERSION);
    assert.equal(info.agent_commit, checkoutCommit());

    pullDemoDisk(root, AGENT, summary);

    // The log command the demo prints is the release's own bunyan, which needs no Node either.
    const bunyan = `/opt/${NAME}/bin/bunyan`;
    assert.ok(demo.stdout().includes(`(${bunyan} /srv/demo/agent.log)`), demo.stdout());
    assert.match(root.ok([bunyan, '-o', 'short', '/srv/demo/agent.log']), /agent ready/);

    assert.equal(await demo.stop(), 0);
    assert.equal(demo.stderr(), '');
  });
});
