// The install as an operator does it, with the unprivileged user `nobody` standing in for the
// service's user: certificates its group can read, check-config run as that user, and start
// failures that are one line naming the key (exit 2 configuration, 1 otherwise).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, test } from 'node:test';
import { lookupGroupId, lookupUser } from '../../src/cli/accounts';
import { unsupportedNode } from '../../src/agent/startup';
import { cli, MAIN, scratch, type Scratch } from './helpers';

const isRoot = process.getuid?.() === 0;
const USER = 'nobody';

/** What the README's steps do for the service's user: its folders and disks, a path it can traverse. */
function handOver(s: Scratch, user = lookupUser(USER)): void {
  fs.chmodSync(s.dir, 0o755);
  fs.mkdirSync(path.join(s.dir, 'state'), { recursive: true });
  for (const owned of [path.join(s.dir, 'state'), path.join(s.dir, 'snapstores'), ...s.disks]) fs.chownSync(owned, user.uid, user.gid);
}

/** stderr without log records. */
function message(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line !== '' && !line.startsWith('{'));
}

describe('check-config --as-user and gen-certs --group', { skip: !isRoot && 'needs root to switch users' }, () => {
  test('keys made without --group are unreadable by the service: check-config as the user says so, as root it does not', { timeout: 60_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    handOver(s);
    assert.equal(cli(['check-config', '--config', s.configFile]).status, 0, 'root reads everything');
    const asUser = cli(['check-config', '--config', s.configFile, '--as-user', USER]);
    assert.equal(asUser.status, 2, asUser.stderr);
    assert.match(asUser.stdout, /^checking as nobody \(uid 65534, gid 65534, with its groups\)$/m);
    assert.match(asUser.stderr, new RegExp(`^coriolis-snapshot-agent: config ${s.configFile}: api\\.tls\\.certificate: cannot read ${s.certs}/server-cert\\.pem: EACCES`));
  });

  test('with --group the user\'s group reads the keys, and the whole config checks out as the user', { timeout: 60_000 }, async (t) => {
    const group = lookupGroupId('nogroup');
    const s = await scratch({ groupId: group });
    t.after(() => s.remove());
    handOver(s);
    for (const name of ['server-key.pem', 'client-key.pem']) {
      const stat = fs.statSync(path.join(s.certs, name));
      assert.deepEqual({ mode: stat.mode & 0o777, gid: stat.gid }, { mode: 0o640, gid: group }, name);
    }
    const folder = fs.statSync(s.certs);
    assert.deepEqual({ mode: folder.mode & 0o777, gid: folder.gid }, { mode: 0o750, gid: group });
    const asUser = cli(['check-config', '--config', s.configFile, '--as-user', USER]);
    assert.equal(asUser.status, 0, asUser.stderr);
    assert.match(asUser.stdout, new RegExp(`^${s.configFile}: OK \\(engine simulated\\)$`, 'm'));
  });

  test('gen-certs --group gives the group the folders it creates, not the ones that were there', { timeout: 60_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    const out = path.join(s.dir, 'etc', 'agent', 'certs');
    const result = cli(['gen-certs', '--out', out, '--group', 'nogroup']);
    assert.equal(result.status, 0, result.stderr);
    const group = lookupGroupId('nogroup');
    for (const dir of [out, path.dirname(out), path.dirname(path.dirname(out))]) assert.equal(fs.statSync(dir).gid, group, dir);
    assert.equal(fs.statSync(s.dir).gid, 0);
    const unknown = cli(['gen-certs', '--out', path.join(s.dir, 'other'), '--group', 'no-such-group']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /^gen-certs: no such group: no-such-group\n/);
    assert.equal(fs.existsSync(path.join(s.dir, 'other')), false);
  });

  test('folders the user cannot write are named; folders the unit creates are only noted', { timeout: 60_000 }, async (t) => {
    const s = await scratch({ groupId: lookupGroupId('nogroup'), top: 'log_file = "/var/log/coriolis-snapshot-agent/agent.log"' });
    t.after(() => s.remove());
    handOver(s);
    fs.chownSync(path.join(s.dir, 'state'), 0, 0);
    fs.chownSync(path.join(s.dir, 'snapstores'), 0, 0);
    const asUser = cli(['check-config', '--config', s.configFile, '--as-user', USER]);
    assert.equal(asUser.status, 2);
    assert.deepEqual(message(asUser.stderr), [
      `coriolis-snapshot-agent: config ${s.configFile}: database_file: ${s.dir}/state is not writable by nobody (uid 65534): EACCES: permission denied, access '${s.dir}/state'`,
      `coriolis-snapshot-agent: config ${s.configFile}: snapstore_destinations[0]: ${s.dir}/snapstores is not writable by nobody (uid 65534): EACCES: permission denied, access '${s.dir}/snapstores'`,
    ]);
    assert.match(asUser.stdout, /^note: log_file: \/var\/log\/coriolis-snapshot-agent does not exist yet: the systemd unit creates it for the service$/m);
    // Writable here, but not under the unit's read-only system unless the operator adds it.
    assert.ok(asUser.stdout.includes(`note: database_file: ${s.dir}/state is outside /run/coriolis-snapshot-agent and /var/log/coriolis-snapshot-agent: under the systemd unit, add it to ReadWritePaths=\n`));
  });

  test('serve as the user stops on the first problem: one line, exit status 2', { skip: spawnSync('sh', ['-c', 'command -v setpriv']).status !== 0, timeout: 60_000 }, async (t) => {
    const s = await scratch({ groupId: lookupGroupId('nogroup') });
    t.after(() => s.remove());
    handOver(s);
    fs.chownSync(path.join(s.dir, 'state'), 0, 0);
    const result = spawnSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--init-groups', process.execPath, MAIN, 'serve', '--config', s.configFile], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(result.status, 2, result.stderr);
    assert.deepEqual(message(result.stderr), [`coriolis-snapshot-agent: config ${s.configFile}: database_file: ${s.dir}/state is not writable by nobody (uid 65534): EACCES: permission denied, access '${s.dir}/state'`]);
  });

  test('an unknown user is a usage error', () => {
    const result = cli(['check-config', '--config', '/nonexistent.toml', '--as-user', 'no-such-user']);
    assert.equal(result.status, 2);
    assert.match(result.stderr, /^coriolis-snapshot-agent check-config: --as-user: no such user: no-such-user\n/);
  });
});

describe('start failures', () => {
  for (const key of ['api.port', 'nbd.port'] as const) {
    test(`a busy ${key} is one line naming it, exit status 1`, { timeout: 60_000 }, async (t) => {
      const s = await scratch();
      t.after(() => s.remove());
      const port = key === 'api.port' ? s.apiPort : s.nbdPort;
      const squatter = net.createServer();
      await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
      t.after(() => squatter.close());
      const result = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
        // Asynchronous: the squatter must keep accepting while serve tries.
        const child = spawn(process.execPath, [MAIN, 'serve', '--config', s.configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (chunk: Buffer) => {
          stderr += chunk.toString();
        });
        child.on('exit', (status) => resolve({ status, stderr }));
      });
      assert.equal(result.status, 1, result.stderr);
      assert.deepEqual(message(result.stderr), [`coriolis-snapshot-agent: ${key}: 127.0.0.1:${port} is already in use (another agent or program is listening there)`]);
    });
  }

  test('without the module, check-config names the control device and the disks that do not exist', { skip: fs.existsSync('/dev/veeamsnap') && 'the module is loaded here', timeout: 60_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    const veeamsnap = fs.readFileSync(s.configFile, 'utf8').replace('engine = "simulated"', 'engine = "veeamsnap"').replace(/\[simulated\][\s\S]*$/, '')
      .replaceAll('device = "disk0"', 'device = "nosuchdisk0"').replaceAll('device = "disk1"', 'device = "nosuchdisk1"');
    fs.writeFileSync(s.configFile, veeamsnap);
    const result = cli(['check-config', '--config', s.configFile]);
    assert.equal(result.status, 2);
    assert.deepEqual(message(result.stderr), [
      `coriolis-snapshot-agent: config ${s.configFile}: engine: /dev/veeamsnap does not exist: is the veeamsnap module loaded? (see the README, "Kernel module")`,
      `coriolis-snapshot-agent: config ${s.configFile}: snapstore_mapping[0].device: no disk nosuchdisk0 on this machine (/dev/nosuchdisk0 does not exist)`,
      `coriolis-snapshot-agent: config ${s.configFile}: snapstore_mapping[1].device: no disk nosuchdisk1 on this machine (/dev/nosuchdisk1 does not exist)`,
    ]);
  });

  test('a Node older than 20 is refused with the reason', () => {
    assert.equal(unsupportedNode('18.19.0'), 'Node.js 20 or newer is required, this is 18.19.0 (see the README, "From a checkout"; the release brings its own Node)');
    assert.equal(unsupportedNode('v16.20.2')?.startsWith('Node.js 20 or newer is required'), true);
    assert.equal(unsupportedNode('20.0.0'), null);
    assert.equal(unsupportedNode('22.11.0'), null);
    assert.equal(unsupportedNode(process.versions.node), null);
  });
});
