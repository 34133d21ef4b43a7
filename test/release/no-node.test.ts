// The release on a machine without Node.js: a scratch root that is this machine minus its Node
// and minus the checkout. Unpacked there, the tarball runs `version`, `gen-certs`,
// `check-config` and the demo, and an image is copied from the demo with the release's own `pull`.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import { after, before, describe, test } from 'node:test';
import { ScratchRoot } from '../helpers/scratch-root';
import { checkoutCommit, ensureRelease, NAME, NODE_PATHS, unpack, VERSION } from './artifacts';

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
    root = ScratchRoot.create(NODE_PATHS, ['/srv/demo']);
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
    const demo = root.spawn([AGENT, 'demo', '--dir', '/srv/demo', '--api-port', '0', '--nbd-port', '0', '--disks', '1', '--disk-size', '32M']);
    t.after(() => demo.kill('SIGKILL'));
    let stderr = '';
    demo.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    let stdout = '';
    const summary = await new Promise<{ api: string; disks: string[] }>((resolve, reject) => {
      demo.stdout?.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        const line = stdout.split('\n').find((text) => text.startsWith('{'));
        if (line !== undefined) resolve(JSON.parse(line) as { api: string; disks: string[] });
      });
      demo.on('exit', (code) => reject(new Error(`demo exited ${code}: ${stderr}`)));
    });
    const certs = root.path('/srv/demo/certs');
    const info = await getJson(`${summary.api}/systeminfo`, certs);
    assert.equal(info.agent_version, VERSION);
    assert.equal(info.agent_commit, checkoutCommit());

    const origin = new URL(summary.api).origin;
    root.ok([AGENT, 'pull', '--agent', origin, '--disk', 'disk0', '--out', '/srv/demo/disk0.raw', '--certs', '/srv/demo/certs', '--json']);
    assert.ok(fs.readFileSync(root.path('/srv/demo/disk0.raw')).equals(fs.readFileSync(root.path(summary.disks[0]))), 'the copy is the disk');

    // The log command the demo prints is the release's own bunyan, which needs no Node either.
    const bunyan = `/opt/${NAME}/bin/bunyan`;
    assert.ok(stdout.includes(`(${bunyan} /srv/demo/agent.log)`), stdout);
    assert.match(root.ok([bunyan, '-o', 'short', '/srv/demo/agent.log']), /agent ready/);

    demo.kill('SIGINT');
    assert.equal(await new Promise((resolve) => demo.on('exit', resolve)), 0);
    assert.equal(stderr, '');
  });
});
