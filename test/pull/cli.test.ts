// `coriolis-snapshot-agent pull` as a program: malformed options exit 2 with a message naming the
// option; a pull killed with SIGKILL resumes; the JSON progress lines and summary.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startE2eAgent } from '../e2e/helpers';
import { readState } from '../../src/pull/state';
import { writeDisk } from '../snapshots/helpers/env';
import { MiB, pull, sameBytes } from './helpers';

const MAIN = path.join(__dirname, '..', '..', 'src', 'main.js');

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [MAIN, 'pull', ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function runAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  return new Promise((resolve) => child.on('close', (status) => resolve({ status, stdout, stderr })));
}

test('malformed options exit 2 with a message naming what is wrong', { timeout: 120_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-pull-cli-'));
  try {
    const certs = path.join(dir, 'certs');
    fs.mkdirSync(certs);
    for (const name of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) fs.writeFileSync(path.join(certs, name), 'x');
    const out = path.join(dir, 'out.img');
    const base = ['--agent', 'https://127.0.0.1:1', '--disk', 'disk0', '--out', out, '--certs', certs];
    const cases: Array<[string[], RegExp]> = [
      [[], /--agent is required/],
      [base.filter((_, i) => i !== 2 && i !== 3), /--disk is required/],
      [['--agent', 'https://x', '--disk', 'd', '--certs', certs], /--out is required/],
      [['--agent', 'https://x', '--disk', 'd', '--out', out], /the client certificate is required/],
      [['--agent', 'https://x', '--disk', 'd', '--out', out, '--ca', 'a', '--cert', 'b'], /the client certificate is required/],
      [[...base, '--ca', 'a'], /--certs or --ca\/--cert\/--key, not both/],
      [[...base, '--parallel', '0'], /--parallel must be an integer from 1 to 64, got "0"/],
      [[...base, '--parallel', '65'], /--parallel must be an integer from 1 to 64/],
      [[...base, '--parallel', '2.5'], /--parallel must be an integer/],
      [[...base, '--parallel', '-1'], /--parallel/],
      [[...base, '--block-size', '1000'], /--block-size must be a power of two from 65536 to 67108864, got 1000/],
      [[...base, '--block-size', '32K'], /--block-size must be a power of two/],
      [[...base, '--block-size', '128M'], /--block-size must be a power of two/],
      [[...base, '--block-size', '3M'], /--block-size must be a power of two/],
      [[...base, '--block-size', 'big'], /--block-size must be a number of bytes/],
      [[...base, '--snapshot', ''], /--snapshot needs an id/],
      [[...base, '--frobnicate'], /Unknown option '--frobnicate'/],
      [[...base, 'extra'], /Unexpected argument 'extra'|positional/i],
      [[...base.slice(0, 1), 'http://127.0.0.1:1', ...base.slice(2)], /the agent speaks https only/],
      [[...base.slice(0, 1), 'not a url', ...base.slice(2)], /is not a URL/],
      [[...base.slice(0, 6), '--certs', path.join(dir, 'missing')], /--ca .*missing\/ca-cert.pem: ENOENT/],
    ];
    for (const [args, message] of cases) {
      const { status, stderr } = run(args);
      assert.equal(status, 2, `${args.join(' ')}: ${stderr}`);
      assert.match(stderr, message, args.join(' '));
    }
    fs.writeFileSync(`${out}.pull-state.json`, '{"version": 1}');
    const garbage = run(base);
    assert.equal(garbage.status, 2);
    assert.match(garbage.stderr, /out\.img\.pull-state\.json is not a pull state/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a pull killed with SIGKILL resumes; progress and summary are JSON lines', { timeout: 180_000 }, async (t) => {
  const e2e = await startE2eAgent({ disks: 1, configure: (config) => { config.limits.readBytesPerSecond = 8 * MiB; } });
  t.after(() => e2e.stop());
  const disk = e2e.disks[0];
  const out = path.join(e2e.dir, 'copy.img');
  const stateFile = `${out}.pull-state.json`;
  writeDisk(disk, 8 * MiB, crypto.randomBytes(40 * MiB));
  const args = [MAIN, 'pull', '--agent', e2e.agent.apiUrl, '--disk', 'disk0', '--out', out, '--certs', e2e.certs, '--block-size', '1M'];

  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  while ((readState(stateFile)?.in_progress?.done.length ?? 0) === 0) await sleep(50);
  child.kill('SIGKILL');
  assert.equal(await exited, 'SIGKILL');
  const progress = stdout.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>);
  assert.ok(progress.length > 0, 'progress lines came before the kill');
  for (const line of progress) {
    assert.deepEqual(Object.keys(line), ['type', 'phase', 'mode', 'done_bytes', 'total_bytes', 'fetched_bytes', 'bytes_per_second', 'eta_seconds']);
  }

  // Not spawnSync: the agent answers from this process.
  const again = await runAsync(args);
  assert.equal(again.status, 0, `${again.stderr} ${again.stdout.slice(-2000)}`);
  const lines = again.stdout.trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
  const summary = lines.at(-1)!;
  assert.equal(summary.type, 'summary');
  assert.equal(summary.resumed, true);
  assert.equal(summary.mode, 'full');
  assert.ok(lines.some((line) => line.type === 'progress' && line.phase === 'verify'));
  assert.ok(sameBytes(out, disk));
  assert.deepEqual(await e2e.json('GET', '/snapshots/'), []);

  // A state file of another disk is refused rather than overwritten.
  await assert.rejects(pull(e2e, { disk: 'disk1', out }), /is the state of disk disk0/);
});
