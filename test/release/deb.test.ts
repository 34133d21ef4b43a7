// The .deb as an operator meets it, in a scratch root that is this machine without its Node:
// installed with dpkg, the unit passes systemd-analyze verify and stays disabled, the README's
// steps turn the sample config into a working one, and the agent runs as the unit runs it
// (its user, no capabilities). Purging removes what the package made and nothing else: the
// operator's files and a live snapshot's snapstore data are kept, and named.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePort } from '../helpers/ports';
import { ScratchRoot } from '../helpers/scratch-root';
import { checkoutCommit, DEB, ensureRelease, leftovers, NODE_PATHS, VERSION } from './artifacts';

const UNIT = '/lib/systemd/system/coriolis-snapshot-agent.service';
const CONFIG = '/etc/coriolis-snapshot-agent/config.toml';
const CERTS = '/etc/coriolis-snapshot-agent/certs';

function install(root: ScratchRoot): string {
  fs.copyFileSync(DEB, root.path('/tmp/agent.deb'));
  return root.ok(['dpkg', '-i', '/tmp/agent.deb']);
}

function request(root: ScratchRoot, method: string, url: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = https.request(url, {
      method,
      ca: fs.readFileSync(root.path(`${CERTS}/ca-cert.pem`)),
      cert: fs.readFileSync(root.path(`${CERTS}/client-cert.pem`)),
      key: fs.readFileSync(root.path(`${CERTS}/client-key.pem`)),
      headers: payload === undefined ? {} : { 'content-type': 'application/json' },
    }, (response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => (text += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, json: JSON.parse(text) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** A key's values in a unit file (the last one wins for single-valued keys). */
function unitValues(unit: string, key: string): string[] {
  return [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1].trim());
}

describe('the .deb', { timeout: 1_500_000 }, () => {
  before(() => ensureRelease());

  describe('installed, configured by the README\'s steps, run as the unit runs it, then purged', () => {
    let root: ScratchRoot;
    before(() => {
      // The sample config's snapstore destination, on a disk filesystem as it must be.
      root = ScratchRoot.create({ remove: NODE_PATHS, volumes: ['/var/lib/coriolis-snapshots'] });
    });
    after(() => root?.close());

    test('installs the agent, the unit, the udev rule and the sample config, and makes the user', () => {
      const said = install(root);
      assert.match(said, /installed and not enabled/);
      const passwd = root.ok(['getent', 'passwd', 'coriolis']).trim().split(':');
      assert.ok(Number(passwd[2]) < 1000, 'a system user');
      assert.match(passwd[6], /nologin|false/);
      assert.ok(root.ok(['id', '-nG', 'coriolis']).split(/\s+/).includes('disk'), 'in the disk group, which the udev rule gives the module\'s devices');
      for (const file of [UNIT, '/lib/udev/rules.d/99-coriolis-snapshot-agent.rules', '/etc/coriolis-snapshot-agent/config.toml.sample', '/etc/logrotate.d/coriolis-snapshot-agent']) {
        assert.ok(fs.existsSync(root.path(file)), file);
      }
      assert.equal(root.ok(['coriolis-snapshot-agent', 'version']).split('\n')[0], VERSION);
      assert.equal(root.ok(['stat', '-c', '%U %a', '/var/lib/coriolis-snapshots']).trim(), 'coriolis 750');
    });

    test('the unit passes systemd-analyze verify, is not enabled, and does not start without a config', () => {
      const verify = root.run(['systemd-analyze', 'verify', UNIT]);
      assert.equal(verify.status, 0, verify.stderr);
      assert.doesNotMatch(verify.stderr, /coriolis-snapshot-agent/);
      assert.ok(!fs.existsSync(root.path('/etc/systemd/system/multi-user.target.wants/coriolis-snapshot-agent.service')));
      assert.deepEqual(unitValues(fs.readFileSync(root.path(UNIT), 'utf8'), 'ConditionPathExists'), [CONFIG]);
    });

    test('the README\'s steps make a config that check-config accepts as the service\'s user', async () => {
      // README, "Install from a package", steps 2 to 4; the engine is the simulated one because
      // no snapshot module is loaded here, and the ports are free ones.
      root.ok(['coriolis-snapshot-agent', 'gen-certs', '--out', CERTS, '--hosts', 'localhost,127.0.0.1', '--group', 'coriolis']);
      root.ok(['cp', '/etc/coriolis-snapshot-agent/config.toml.sample', CONFIG]);
      fs.mkdirSync(root.path('/srv/disks'));
      fs.writeFileSync(root.path('/srv/disks/disk0.img'), Buffer.alloc(16 << 20, 7));
      // As a disk's device node is: the disk group's, read-write.
      root.ok(['chown', 'root:disk', '/srv/disks/disk0.img']);
      root.ok(['chmod', '0660', '/srv/disks/disk0.img']);
      const [api, nbd] = [await freePort(), await freePort()];
      const sample = fs.readFileSync(root.path(CONFIG), 'utf8');
      const edited = sample
        .replace('#engine = "auto"', 'engine = "simulated"')
        .replace('device = "sda"', 'device = "disk0"')
        .replace('bind = "0.0.0.0"\nport = 9999', `bind = "127.0.0.1"\nport = ${api}`)
        .replace('#port = 10809', `port = ${nbd}`)
        .replace('#disks = ["/srv/demo/disk0.img"]', 'disks = ["/srv/disks/disk0.img"]')
        .replace('#image_dir = "/srv/demo/engine"', 'image_dir = "/run/coriolis-snapshot-agent/engine"');
      assert.equal(edited.split('\n').length, sample.split('\n').length);
      for (const line of ['engine = "simulated"', 'device = "disk0"', `port = ${api}`, `port = ${nbd}`, 'image_dir = "/run/coriolis-snapshot-agent/engine"']) assert.ok(edited.includes(line), line);
      fs.writeFileSync(root.path(CONFIG), edited);
      // systemd makes the unit's RuntimeDirectory= before the service starts.
      root.ok(['install', '-d', '-o', 'coriolis', '-g', 'coriolis', '-m', '0700', '/run/coriolis-snapshot-agent']);
      const checked = root.ok(['coriolis-snapshot-agent', 'check-config', '--as-user', 'coriolis', '--config', CONFIG]);
      assert.match(checked, /OK \(engine simulated\)/);
    });

    test('the agent runs as the unit runs it: its user, no capabilities, the unit\'s command', async (t) => {
      const unit = fs.readFileSync(root.path(UNIT), 'utf8');
      const [user] = unitValues(unit, 'User');
      const [group] = unitValues(unit, 'Group');
      const groups = unitValues(unit, 'SupplementaryGroups').join(',');
      const [execStart] = unitValues(unit, 'ExecStart');
      assert.deepEqual(unitValues(unit, 'CapabilityBoundingSet'), ['']);
      const agent = root.spawn(['setpriv', `--reuid=${user}`, `--regid=${group}`, `--groups=${groups}`, '--no-new-privs', '--bounding-set=-all', '--inh-caps=-all', '--', ...execStart.split(' ')]);
      t.after(() => agent.kill('SIGKILL'));
      let log = '';
      await new Promise<void>((resolve, reject) => {
        agent.stderr?.on('data', (chunk: Buffer) => {
          log += chunk.toString();
          if (log.includes('"agent ready"')) resolve();
        });
        agent.on('exit', (code) => reject(new Error(`the agent exited ${code}:\n${log}`)));
      });
      const status = fs.readFileSync(`/proc/${agent.pid}/status`, 'utf8');
      const uid = root.ok(['id', '-u', 'coriolis']).trim();
      assert.match(status, new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s+${uid}\\s+${uid}$`, 'm'));
      assert.match(status, /^CapEff:\s+0+$/m);

      const port = /^port = (\d+)$/m.exec(fs.readFileSync(root.path(CONFIG), 'utf8'))![1];
      const api = `https://127.0.0.1:${port}/api/v1`;
      const info = await request(root, 'GET', `${api}/systeminfo`);
      assert.equal(info.status, 200);
      assert.equal(info.json.agent_version, VERSION);
      assert.equal(info.json.agent_commit, checkoutCommit());
      // A snapshot left live: its snapstore is in /var/lib/coriolis-snapshots.
      const created = await request(root, 'POST', `${api}/snapshots/`, { tracked_disk_ids: ['disk0'] });
      assert.equal(created.status, 200, JSON.stringify(created.json));
      assert.notEqual(fs.readdirSync(root.path('/var/lib/coriolis-snapshots')).length, 0);

      agent.kill('SIGTERM');
      assert.equal(await new Promise((resolve) => agent.on('exit', resolve)), 0);
    });

    test('an upgrade (the package installed again) keeps the user, the config and the certificates', () => {
      const before = { uid: root.ok(['id', '-u', 'coriolis']), config: fs.readFileSync(root.path(CONFIG)), key: fs.readFileSync(root.path(`${CERTS}/server-key.pem`)) };
      const said = install(root);
      assert.doesNotMatch(said, /not enabled/, 'the config exists: no first-install instructions');
      assert.equal(root.ok(['id', '-u', 'coriolis']), before.uid);
      assert.ok(fs.readFileSync(root.path(CONFIG)).equals(before.config));
      assert.ok(fs.readFileSync(root.path(`${CERTS}/server-key.pem`)).equals(before.key));
    });

    test('purge keeps, and names, the operator\'s config and certificates and the live snapshot\'s snapstore', () => {
      const snapstores = fs.readdirSync(root.path('/var/lib/coriolis-snapshots')).sort();
      const purged = root.run(['dpkg', '--purge', 'coriolis-snapshot-agent']);
      assert.equal(purged.status, 0, purged.stderr);
      assert.match(purged.stderr, /kept \/var\/lib\/coriolis-snapshots/);
      assert.match(purged.stderr, /kept \/etc\/coriolis-snapshot-agent \(your config and certificates\)/);
      assert.match(purged.stderr, /kept the user coriolis/);
      assert.deepEqual(fs.readdirSync(root.path('/var/lib/coriolis-snapshots')).sort(), snapstores);
      assert.ok(fs.existsSync(root.path(CONFIG)) && fs.existsSync(root.path(`${CERTS}/server-key.pem`)));
      for (const gone of ['/opt/coriolis-snapshot-agent', '/usr/bin/coriolis-snapshot-agent', UNIT, '/etc/coriolis-snapshot-agent/config.toml.sample', '/var/lib/coriolis-snapshot-agent']) {
        assert.ok(!fs.existsSync(root.path(gone)), `${gone} is gone`);
      }
    });
  });

  test('install then purge leaves the machine as it was, but for dpkg\'s own records', () => {
    const root = ScratchRoot.create({ remove: NODE_PATHS });
    try {
      install(root);
      assert.ok(root.changes().some((file) => file.startsWith('opt/coriolis-snapshot-agent/')));
      root.ok(['dpkg', '--purge', 'coriolis-snapshot-agent']);
      assert.deepEqual(leftovers(root, /^var\/(lib\/dpkg|log|cache\/debconf)\//), []);
      assert.notEqual(root.run(['getent', 'passwd', 'coriolis']).status, 0, 'the user the package made is gone');
    } finally {
      root.close();
    }
  });

  test('dpkg-deb sees the package\'s fields, its conffiles and its maintainer scripts', () => {
    const fields = spawnSync('dpkg-deb', ['-f', DEB], { encoding: 'utf8' }).stdout;
    assert.match(fields, new RegExp(`^Version: ${VERSION.replace(/\./g, '\\.')}$`, 'm'));
    assert.match(fields, /^Depends: libc6 \(>= 2\.28\)/m);
    const control = spawnSync('dpkg-deb', ['--ctrl-tarfile', DEB], { maxBuffer: 1 << 24 });
    const listed = spawnSync('tar', ['-t'], { input: control.stdout, encoding: 'utf8' }).stdout.split('\n').map((file) => path.basename(file));
    for (const file of ['control', 'conffiles', 'postinst', 'prerm', 'postrm']) assert.ok(listed.includes(file), file);
  });
});
