// The .rpm, installed and erased with Debian's rpm in a scratch root (its database knows no
// glibc, so dependencies go unchecked): the same files as the .deb in RHEL's places, the same
// user, and an erase that leaves only rpm's own records.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { before, describe, test } from 'node:test';
import { ScratchRoot } from '../helpers/scratch-root';
import { ensureRelease, leftovers, NODE_PATHS, RPM, VERSION } from './artifacts';

describe('the .rpm', { timeout: 1_500_000 }, () => {
  before(() => ensureRelease());

  test('requires glibc 2.28 and nothing of the bundled Node\'s', () => {
    const requires = spawnSync('rpm', ['-qpR', RPM], { encoding: 'utf8' }).stdout.split('\n').map((line) => line.trim()).filter((line) => line && !line.startsWith('rpmlib(') && line !== '/bin/sh');
    assert.deepEqual(requires.sort(), ['glibc >= 2.28', 'libstdc++', 'shadow-utils']);
  });

  test('installs the agent, the unit and the udev rule in RHEL\'s places and makes the user; erase removes them and the user', () => {
    const root = ScratchRoot.create({ remove: NODE_PATHS });
    try {
      fs.copyFileSync(RPM, root.path('/tmp/agent.rpm'));
      const installed = root.ok(['rpm', '-i', '--nodeps', '/tmp/agent.rpm']);
      assert.match(installed, /installed and not enabled/);
      for (const file of ['/opt/coriolis-snapshot-agent/bin/coriolis-snapshot-agent', '/usr/lib/systemd/system/coriolis-snapshot-agent.service',
        '/usr/lib/udev/rules.d/99-coriolis-snapshot-agent.rules', '/etc/coriolis-snapshot-agent/config.toml.sample', '/etc/logrotate.d/coriolis-snapshot-agent']) {
        assert.ok(fs.existsSync(root.path(file)), file);
      }
      assert.equal(root.ok(['coriolis-snapshot-agent', 'version']).split('\n')[0], VERSION);
      assert.ok(root.ok(['id', '-nG', 'coriolis']).split(/\s+/).includes('disk'));
      const verify = root.run(['systemd-analyze', 'verify', '/usr/lib/systemd/system/coriolis-snapshot-agent.service']);
      assert.equal(verify.status, 0, verify.stderr);

      root.ok(['rpm', '-e', 'coriolis-snapshot-agent']);
      assert.notEqual(root.run(['getent', 'passwd', 'coriolis']).status, 0);
      // rpm's database: Debian's rpm keeps it in ~/.rpmdb.
      assert.deepEqual(leftovers(root, /^(var\/lib\/rpm|root\/\.rpmdb)\//), []);
    } finally {
      root.close();
    }
  });
});
