// An NBD server over a FakeExportRegistry with test certificates, a raw client that reaches the
// transmission phase in one call, and an async runner for the Debian NBD tools (the server runs
// in the test's own process, so the tools must never be run synchronously).
import bunyan from 'bunyan';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../../../src/core/log';
import { createNbdServer, type NbdServer, type NbdServerOptions } from '../../../src/nbd/server';
import { Info, Option, OptionReply } from '../../../src/nbd/wire';
import { makeTestCerts, type TestCerts } from '../../helpers/certs';
import { FakeExportRegistry, writePatternImage } from './fake-registry';
import { encodeInfoRequest, encodeMetaContextQuery, RawClient } from './raw-client';

export const MiB = 1024 * 1024;
export const EXPORT_NAME = '1001/vda';
export const EXPORT_SIZE = 8 * MiB;
export const CBT_BLOCK_SIZE = 64 * 1024;

export interface LogRecord {
  level: number;
  msg: string;
  [key: string]: unknown;
}

/** A logger that keeps its records for the test to look at. */
export function captureLogger(): { log: Logger; records: LogRecord[] } {
  const records: LogRecord[] = [];
  const log = bunyan.createLogger({
    name: 'test',
    streams: [{ type: 'raw', level: 'debug', stream: { write: (record: object) => { records.push(record as LogRecord); } } }],
  });
  return { log, records };
}

export interface Fixture {
  dir: string;
  certs: TestCerts;
  image: Buffer;
  imageFile: string;
  registry: FakeExportRegistry;
}

/**
 * A scratch directory with certificates and one 8 MiB pattern image exported as EXPORT_NAME,
 * snapshot 3 of its generation, with CBT stamps: block 0: 1, 1: 2, 2: 3, 3: 0, 4-5: 3, 6: 2, rest 0.
 */
export function makeFixture(): Fixture {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-nbd-'));
  const certsDir = path.join(dir, 'certs');
  fs.mkdirSync(certsDir);
  const certs = makeTestCerts(certsDir);
  const imageFile = path.join(dir, 'image.raw');
  const image = writePatternImage(imageFile, EXPORT_SIZE);
  const registry = new FakeExportRegistry();
  const map = Buffer.alloc(EXPORT_SIZE / CBT_BLOCK_SIZE);
  map.set([1, 2, 3, 0, 3, 3, 2], 0);
  registry.add({ name: EXPORT_NAME, file: imageFile, cbt: { generationId: 'gen-7', snapshotNumber: 3, blockSize: CBT_BLOCK_SIZE, map } });
  return { dir, certs, image, imageFile, registry };
}

export function removeFixture(fixture: Fixture): void {
  fs.rmSync(fixture.dir, { recursive: true, force: true });
}

export interface Running {
  server: NbdServer;
  port: number;
}

export async function startServer(fixture: Fixture, overrides: Partial<NbdServerOptions> = {}): Promise<Running> {
  const pem = (file: string): string => fs.readFileSync(file, 'utf8');
  const server = createNbdServer({
    registry: fixture.registry,
    log: captureLogger().log,
    tls: { mode: 'require', certificate: pem(fixture.certs.serverCert), key: pem(fixture.certs.serverKey), caCertificate: pem(fixture.certs.caCert) },
    bind: '127.0.0.1',
    port: 0,
    maxConnections: 16,
    ...overrides,
  });
  const { port } = await server.listen();
  return { server, port };
}

export interface ReadyOptions {
  /** Upgrade to TLS first (the server requires it unless started with tls off). */
  tls?: TestCerts | null;
  structured?: boolean;
  metaContexts?: string[];
  exportName?: string;
  /** Ask for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO, promising to honour it. */
  blockSize?: boolean;
}

/** A raw client in the transmission phase after NBD_OPT_GO. */
export async function connectReady(target: number | string, options: ReadyOptions): Promise<RawClient> {
  const client = await RawClient.connect(target);
  await client.start();
  if (options.tls) await client.startTls(options.tls);
  if (options.structured) {
    const [reply] = await client.option(Option.STRUCTURED_REPLY);
    if (reply.type !== OptionReply.ACK) throw new Error('structured replies refused');
  }
  const name = options.exportName ?? EXPORT_NAME;
  if (options.metaContexts) {
    const replies = await client.option(Option.SET_META_CONTEXT, encodeMetaContextQuery(name, options.metaContexts));
    if (replies.at(-1)!.type !== OptionReply.ACK) throw new Error('SET_META_CONTEXT refused');
  }
  const replies = await client.option(Option.GO, encodeInfoRequest(name, options.blockSize ? [Info.BLOCK_SIZE] : []));
  if (replies.at(-1)!.type !== OptionReply.ACK) throw new Error(`GO refused: ${replies.at(-1)!.type} ${replies.at(-1)!.data.toString()}`);
  return client;
}

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a program without blocking the event loop (the server under test lives in it). */
export function run(command: string, args: string[],
  options: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...options.env } });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk; });
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    if (options.input !== undefined) {
      // A program may exit without reading its input; that is its answer, not an error here.
      child.stdin!.on('error', () => {});
      child.stdin!.end(options.input);
    }
  });
}

/** Polls until `condition` holds, or fails after `timeoutMs`. */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
