// The systemd unit, the sample config, the logrotate snippet and the README describe one
// installation: these tests hold them to each other, and to systemd's own verifier.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { SERVICE_DIRECTORIES } from '../../src/cli/check-config';
import { DEFAULT_SHUTDOWN_GRACE_SECONDS, MAX_SHUTDOWN_GRACE_SECONDS } from '../../src/config/config';

const ROOT = path.resolve(__dirname, '../../..');
const UNIT_FILE = path.join(ROOT, 'contrib/coriolis-snapshot-agent.service');
const unit = fs.readFileSync(UNIT_FILE, 'utf8');
const sample = fs.readFileSync(path.join(ROOT, 'contrib/config.toml.sample'), 'utf8');
const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');

/** Every value of a directive in the unit. */
function directive(name: string): string[] {
  return [...unit.matchAll(new RegExp(`^${name}=(.*)$`, 'gm'))].map((match) => match[1].trim());
}

function sampleValue(key: string): string | undefined {
  return new RegExp(`^${key} = "(.*)"$`, 'm').exec(sample)?.[1];
}

function hasTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

describe('systemd unit', () => {
  test('systemd-analyze verify accepts it (ExecStart pointed at an executable)', { skip: !hasTool('systemd-analyze'), timeout: 60_000 }, (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-unit-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    // The command exists only once installed (README step 3); here a stand-in takes its place.
    const command = path.join(dir, 'coriolis-snapshot-agent');
    fs.writeFileSync(command, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const [execStart] = directive('ExecStart');
    const executable = execStart.split(' ')[0];
    const copy = path.join(dir, 'coriolis-snapshot-agent.service');
    fs.writeFileSync(copy, unit.replaceAll(executable, command));
    const result = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stderr, '');
  });

  test('ExecStart is the release\'s command where the README and the packages put it, outside the homes ProtectHome hides', () => {
    const [execStart] = directive('ExecStart');
    assert.match(execStart, /^\/opt\/coriolis-snapshot-agent\/bin\/coriolis-snapshot-agent serve --config \/etc\/coriolis-snapshot-agent\/config\.toml$/);
    assert.ok(readme.includes('mv /opt/coriolis-snapshot-agent-VERSION-linux-x64 /opt/coriolis-snapshot-agent'));
    assert.deepEqual(directive('ProtectHome'), ['yes']);
  });

  test('does not start before the operator has written the config', () => {
    assert.deepEqual(directive('ConditionPathExists'), ['/etc/coriolis-snapshot-agent/config.toml']);
  });

  test('Type=notify, and a stop timeout above the longest default drain', () => {
    assert.deepEqual(directive('Type'), ['notify']);
    const [timeout] = directive('TimeoutStopSec');
    assert.ok(Number(timeout) > DEFAULT_SHUTDOWN_GRACE_SECONDS * 2, `TimeoutStopSec=${timeout}`);
    assert.ok(MAX_SHUTDOWN_GRACE_SECONDS > DEFAULT_SHUTDOWN_GRACE_SECONDS);
    assert.deepEqual(directive('RestartPreventExitStatus'), ['2'], 'a configuration error is not restarted every 5 s');
  });

  test('the folders check-config expects the unit to create are the ones it creates', () => {
    const created = [...directive('RuntimeDirectory').map((name) => `/run/${name}`), ...directive('LogsDirectory').map((name) => `/var/log/${name}`)];
    assert.deepEqual(created.sort(), [...SERVICE_DIRECTORIES].sort());
  });

  test('the sample config writes only where the unit lets the service write', () => {
    const writable = [...SERVICE_DIRECTORIES, ...directive('ReadWritePaths').flatMap((value) => value.split(' '))];
    const inside = (file: string): boolean => writable.some((dir) => file.startsWith(`${dir}/`) || file === dir);
    const database = sampleValue('database_file');
    assert.ok(database !== undefined && inside(database), `database_file ${database}`);
    // log_file is unset by default (the journal); its commented example must still fit.
    assert.equal(sampleValue('log_file'), undefined);
    const logExample = /^#log_file = "(.*)"$/m.exec(sample)?.[1];
    assert.ok(logExample !== undefined && inside(logExample), `log_file example ${logExample}`);
    const destinations = /^snapstore_destinations = \[(.*)\]$/m.exec(sample)![1].split(',').map((d) => JSON.parse(d.trim()) as string);
    for (const destination of destinations) assert.ok(inside(destination), destination);
    const socketExample = /^#unix_socket = "(.*)"$/m.exec(sample)?.[1];
    assert.ok(socketExample !== undefined && inside(socketExample), `unix_socket example ${socketExample}`);
  });
});

describe('logrotate snippet', () => {
  test('rotates the unit\'s log folder, reopening through a reload that sends SIGHUP', () => {
    const snippet = fs.readFileSync(path.join(ROOT, 'contrib/coriolis-snapshot-agent.logrotate'), 'utf8');
    assert.match(snippet, new RegExp(`^${SERVICE_DIRECTORIES[1]}/\\*\\.log \\{`, 'm'));
    assert.match(snippet, /systemctl reload coriolis-snapshot-agent\.service/);
    assert.deepEqual(directive('ExecReload'), ['/bin/kill -HUP $MAINPID']);
  });

  test('logrotate accepts its syntax', { skip: !hasTool('logrotate'), timeout: 30_000 }, (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-logrotate-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const snippet = fs.readFileSync(path.join(ROOT, 'contrib/coriolis-snapshot-agent.logrotate'), 'utf8')
      .replace(SERVICE_DIRECTORIES[1], dir).replace(/^\s*su .*$/m, '');
    const config = path.join(dir, 'conf');
    fs.writeFileSync(config, snippet);
    fs.writeFileSync(path.join(dir, 'agent.log'), 'x\n');
    // -d: a dry run that parses and reports, rotating nothing.
    const result = spawnSync('logrotate', ['-d', '-s', path.join(dir, 'state'), config], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stderr, /considering log .*agent\.log/);
    assert.doesNotMatch(result.stdout + result.stderr, /error/i);
  });
});
