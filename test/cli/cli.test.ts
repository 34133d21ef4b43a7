import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';

const MAIN = path.resolve(__dirname, '../../src/main.js');
const VERSION = (JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../package.json'), 'utf8')) as { version: string }).version;

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('command line', () => {
  test('version prints the package version, then that a development tree has no commit', () => {
    assert.deepEqual(cli('version'), { status: 0, stdout: `${VERSION}\ncommit none (not a release build)\nnode ${process.version}\n`, stderr: '' });
    assert.equal(cli('--version').stdout, cli('version').stdout);
  });

  test('--help explains every command and exits 0', () => {
    const { status, stdout } = cli('--help');
    assert.equal(status, 0);
    for (const word of ['serve', '--config', 'version', 'check-config']) assert.ok(stdout.includes(word), word);
    assert.equal(cli('serve', '--help').status, 0);
  });

  test('each command\'s --help prints its own options', () => {
    const help = (command: string): string => {
      const result = cli(command, '--help');
      assert.equal(result.status, 0, command);
      return result.stdout;
    };
    const options: Record<string, string[]> = {
      serve: ['--config', 'shutdown_grace_seconds', 'SIGHUP'],
      demo: ['--dir', '--api-port', '--nbd-port', '--disks', '--disk-size', 'npx bunyan'],
      'gen-certs': ['--out', '--hosts', '--group', '--force'],
      'check-config': ['--config', '--as-user'],
    };
    for (const [command, words] of Object.entries(options)) {
      const text = help(command);
      assert.match(text, new RegExp(`^usage: coriolis-snapshot-agent ${command}`), command);
      for (const word of words) assert.ok(text.includes(word), `${command} --help mentions ${word}`);
      for (const other of Object.keys(options).filter((name) => name !== command)) {
        assert.ok(!text.includes(`coriolis-snapshot-agent ${other}`), `${command} --help is about ${command} only`);
      }
    }
  });

  test('no command prints the usage and exits 2', () => {
    const { status, stdout } = cli();
    assert.equal(status, 2);
    assert.match(stdout, /Usage:/);
  });

  test('an unknown command or option is a usage error', () => {
    const unknownCommand = cli('snapshot');
    assert.equal(unknownCommand.status, 2);
    assert.match(unknownCommand.stderr, /unknown command "snapshot"/);
    const unknownOption = cli('serve', '--conf', '/x');
    assert.equal(unknownOption.status, 2);
    assert.match(unknownOption.stderr, /Unknown option '--conf'/);
    assert.equal(cli('serve', '--config').status, 2);
    assert.equal(cli('version', 'extra').status, 2);
  });

  test('a bad config stops serve before it starts, with the reason on stderr', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-cli-'));
    try {
      const file = path.join(dir, 'config.toml');
      fs.writeFileSync(file, 'snapstore_destinations = ["/tmp"]\nbogus = 1\n');
      for (const command of ['serve', 'check-config']) {
        const { status, stderr } = cli(command, '--config', file);
        assert.equal(status, 2);
        assert.equal(stderr, `coriolis-snapshot-agent: config ${file}: bogus: unknown key\n`);
      }
      assert.match(cli('serve', '--config', path.join(dir, 'none.toml')).stderr, /none\.toml: cannot read the file/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
