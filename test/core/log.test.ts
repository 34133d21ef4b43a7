import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { createLogger, reopenLogFile } from '../../src/core/log';

interface LogRecord {
  name: string;
  msg: string;
  level: number;
  disk?: string;
}

const parseRecord = (line: string): LogRecord => JSON.parse(line) as LogRecord;

function fakeStderr(isTTY: boolean): PassThrough & { isTTY: boolean; text(): string } {
  const stream = new PassThrough() as PassThrough & { isTTY: boolean; text(): string };
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  stream.isTTY = isTTY;
  stream.text = () => Buffer.concat(chunks).toString('utf8');
  return stream;
}

function waitForFile(file: string): Promise<string> {
  return new Promise((resolve) => {
    const poll = (): void => {
      const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
      if (text.endsWith('\n')) resolve(text);
      else setTimeout(poll, 10);
    };
    poll();
  });
}

test('records go to the log file as bunyan JSON, creating its directory', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-log-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'nested', 'agent.log');
  const stderr = fakeStderr(false);
  createLogger({ logFile: file, stderr }).info({ disk: 'vda' }, 'tracking started');
  const record = parseRecord(await waitForFile(file));
  assert.equal(record.name, 'coriolis-snapshot-agent');
  assert.equal(record.msg, 'tracking started');
  assert.equal(record.disk, 'vda');
  assert.equal(record.level, 30);
  assert.equal(stderr.text(), '', 'stderr is not a terminal: nothing goes there');
});

test('a terminal on stderr gets the records too', async (t) => {
  const stderr = fakeStderr(true);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-log-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'a.log');
  createLogger({ logFile: file, stderr }).warn('snapstore filling');
  assert.equal(parseRecord(stderr.text()).msg, 'snapstore filling');
  assert.equal(parseRecord(await waitForFile(file)).msg, 'snapstore filling');
});

test('without a log file, records go to stderr whatever it is', () => {
  const stderr = fakeStderr(false);
  createLogger({ logFile: null, stderr }).error('engine failed');
  assert.equal(parseRecord(stderr.text()).msg, 'engine failed');
});

test('records below the level are dropped', () => {
  const stderr = fakeStderr(false);
  createLogger({ logFile: null, stderr, level: 'warn' }).info('noise');
  assert.equal(stderr.text(), '');
});

test('reopenLogFile moves every logger, children made before included, to a new file at the same path', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-log-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'agent.log');
  const log = createLogger({ logFile: file, stderr: fakeStderr(false) });
  const child = log.child({ component: 'watcher' });
  log.info('before');
  await waitForFile(file);
  fs.renameSync(file, `${file}.1`);
  reopenLogFile(log);
  child.info('from the child');
  log.info('from the parent');
  const lines = async (): Promise<string[]> => (await waitForFile(file)).trim().split('\n').map((line) => parseRecord(line).msg);
  while ((await lines()).length < 2) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(await lines(), ['from the child', 'from the parent']);
  assert.deepEqual(fs.readFileSync(`${file}.1`, 'utf8').trim().split('\n').map((line) => parseRecord(line).msg), ['before']);
});

test('the demo keeps its records in the file even on a terminal', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-log-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const stderr = fakeStderr(true);
  const file = path.join(dir, 'agent.log');
  createLogger({ logFile: file, stderr, echoToTerminal: false }).info('quiet');
  assert.equal(parseRecord(await waitForFile(file)).msg, 'quiet');
  assert.equal(stderr.text(), '');
});
