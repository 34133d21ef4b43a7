// The demo on a terminal: its instructions and summary on stdout, its log records in the
// demo folder's log file, nothing interleaved.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { MAIN, records } from './helpers';

test('demo prints instructions and one JSON line on stdout, and logs to DIR/agent.log', { timeout: 120_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-demo-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const child = spawn(process.execPath, [MAIN, 'demo', '--dir', dir, '--api-port', '0', '--nbd-port', '0', '--disks', '1', '--disk-size', '16M'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const summary = await new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const line = stdout.split('\n').find((l) => l.startsWith('{'));
      if (line !== undefined) resolve(JSON.parse(line) as Record<string, unknown>);
    });
    child.on('exit', (code) => reject(new Error(`demo exited ${code}: ${stderr}`)));
  });
  assert.match(stdout, /^Try:$/m);
  assert.match(stdout, new RegExp(`Its log: ${dir}/agent\\.log \\(npx bunyan ${dir}/agent\\.log\\)`));
  assert.match(String(summary.api), /^https:\/\/127\.0\.0\.1:\d+\/api\/v1$/);
  // The config holds the ports the kernel chose, not 0.
  assert.doesNotMatch(fs.readFileSync(path.join(dir, 'config.toml'), 'utf8'), /^port = 0$/m);
  assert.equal(records(stdout).length, 1, 'the summary is the only JSON on stdout');
  child.kill('SIGINT');
  assert.equal(await new Promise((resolve) => child.on('exit', resolve)), 0);
  assert.equal(stderr, '');
  const logged = records(fs.readFileSync(path.join(dir, 'agent.log'), 'utf8')).map((r) => r.msg);
  assert.ok(logged.includes('agent ready') && logged.includes('agent stopped'), logged.join('\n'));
});
