// The whole agent on a real kernel module (inside the VM): `serve` runs as a child process with a
// config written here, while a writer keeps appending to, rewriting and replacing files on an ext4
// filesystem mounted from an origin disk. A snapshot copied over HTTPS and over NBD gives the same
// bytes, and e2fsck finds the copy clean; a second snapshot's changed ranges, applied to that copy,
// give the second image. AGENT_ENGINE chooses the engine (default veeamsnap).
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { test } from 'node:test';
import { generateCertificates } from '../../src/cli/gen-certs';
import { selectEngine } from '../../src/engine/select';
import { Command } from '../../src/nbd/wire';
import { findCommand } from '../native/helpers/loop';
import { connectReady, run } from '../nbd/helpers/server';
import { blksnapLoaded, guestDisks, veeamsnapLoaded, vmSkipReason } from './run';
import { moduleEngine } from './modules';

const MiB = 1024 * 1024;
const ENGINE = process.env.AGENT_ENGINE || 'veeamsnap';
/** nbdcopy when it is installed, else the tests' raw NBD client; AGENT_NBD_CLIENT=raw forces the latter. */
const NBD_CLIENT = process.env.AGENT_NBD_CLIENT || (findCommand('nbdcopy') ? 'nbdcopy' : 'raw');
const API_PORT = 9999;
const NBD_PORT = 10809;

function skipReason(): string | false {
  const notVm = vmSkipReason();
  if (notVm) return notVm;
  const loaded: Record<string, boolean> = { veeamsnap: veeamsnapLoaded(), blksnap: blksnapLoaded(), auto: veeamsnapLoaded() || blksnapLoaded() };
  // An engine this list does not know is left to the agent to refuse, as a failure.
  if (loaded[ENGINE] === false) return `AGENT_ENGINE=${ENGINE}: its module is not loaded (VEEAMSNAP_KO, or BDEVFILTER_KO and BLKSNAP_KO)`;
  const missing = ['mkfs.ext4', 'e2fsck'].filter((c) => !findCommand(c));
  return missing.length > 0 ? `not installed: ${missing.join(', ')} (Debian package e2fsprogs)` : false;
}

interface Snapshot {
  snapshot_id: string;
  volume_snapshots: Array<{ snapshot_number: number; generation_id: string; original_device: { tracking_id: string } }>;
}
interface Changes { backup_type: string; ranges: Array<{ start_offset: number; length: number }> }

function sh(command: string, ...args: string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(fs.createReadStream(file), hash);
  return hash.digest('hex');
}

/**
 * Appends to a log, rewrites a file in place and replaces whole files under `dir`, 20 times a
 * second, until killed: a machine at work. One process, so that the emulated CPUs go to the agent.
 */
function startWriter(dir: string): ChildProcess {
  const script = `
    const fs = require('node:fs');
    const path = require('node:path');
    const crypto = require('node:crypto');
    const dir = process.argv[1];
    const rewrite = fs.openSync(path.join(dir, 'rewrite.bin'), 'w');
    let i = 0;
    setInterval(() => {
      i++;
      fs.appendFileSync(path.join(dir, 'append.log'), 'line ' + i + '\\n');
      fs.writeSync(rewrite, crypto.randomBytes(64 * 1024), 0, 64 * 1024, (i % 64) * 64 * 1024);
      fs.writeFileSync(path.join(dir, 'new.tmp'), crypto.randomBytes(200 * 1000));
      fs.renameSync(path.join(dir, 'new.tmp'), path.join(dir, 'file.' + (i % 25)));
    }, 50);`;
  return spawn(process.execPath, ['-e', script, dir], { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Progress on stderr as it happens: under emulation each step takes a while. */
function step(message: string): void {
  process.stderr.write(`agent.test: ${new Date().toISOString().slice(11, 19)} ${message}\n`);
}

/**
 * The agent leaves its trackers in the kernel on purpose (they outlive it); the test files that
 * run next in this VM expect untracked disks.
 */
async function stopAllTracking(stateDir: string): Promise<void> {
  const kind = ENGINE === 'auto' ? (await selectEngine('auto')).engine : ENGINE;
  if (kind !== 'veeamsnap' && kind !== 'blksnap') throw new Error(`agent.test.ts cannot clean up after engine ${kind}`);
  const engine = await moduleEngine(kind, stateDir);
  try {
    for (const tracker of await engine.listTrackers()) await engine.stopTracking(tracker.device);
  } finally {
    await engine.close();
  }
}

interface Agent {
  child: ChildProcess;
  stderr: () => string;
}

/**
 * The agent's command line for `args`: this checkout's, or a release's launcher when
 * AGENT_COMMAND names one (dist/release's bin/coriolis-snapshot-agent, unpacked), so that the
 * release itself can be run against the real module.
 */
function agentCommand(args: string[]): [string, string[]] {
  const release = process.env.AGENT_COMMAND;
  return release ? [release, args] : [process.execPath, [path.resolve(__dirname, '../../src/main.js'), ...args]];
}

/** `serve` in a child process; resolves once it logs 'agent ready', rejects if it exits first. */
function startAgent(config: string): Promise<Agent> {
  const child = spawn(...agentCommand(['serve', '--config', config]), { stdio: ['ignore', 'inherit', 'pipe'] });
  let log = '';
  return new Promise((resolve, reject) => {
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      log += chunk;
      // Whole lines only: the last one may still be arriving.
      if (log.split('\n').slice(0, -1).some((line) => /^\{.*"msg":"agent ready"/.test(line))) resolve({ child, stderr: () => log });
    });
    child.on('exit', (code, signal) => reject(new Error(`the agent exited (${code ?? signal}) before it was ready:\n${log}`)));
  });
}

test(`the whole agent (${ENGINE}) serves a live ext4 disk's snapshots over HTTPS, NBD and pull, full then incremental`,
  { skip: skipReason(), timeout: 40 * 60_000 }, async (t) => {
    const [origin] = guestDisks().filter((d) => d.role === 'origin');
    const store = guestDisks().find((d) => d.role === 'store')!;
    const disk = path.basename(origin.device);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-vm-agent-'));
    const undo: Array<() => unknown> = [];
    t.after(async () => {
      for (const action of undo.reverse()) await action();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    // The origin: ext4, mounted, written to throughout. The store disk holds the snapstores and,
    // beside them, the copies (the guest's /tmp is memory).
    step(`ext4 on ${origin.device} (written to) and ${store.device} (snapstores, copies)`);
    const live = path.join(dir, 'live');
    const storeMount = path.join(dir, 'store');
    for (const [device, mountPoint] of [[origin.device, live], [store.device, storeMount]] as const) {
      sh('mkfs.ext4', '-q', '-F', device);
      fs.mkdirSync(mountPoint);
      sh('mount', device, mountPoint);
      undo.push(() => sh('umount', mountPoint));
    }
    const snapstores = path.join(storeMount, 'snapstores');
    const copies = path.join(storeMount, 'copies');
    fs.mkdirSync(snapstores);
    fs.mkdirSync(copies);
    const writer = startWriter(live);
    const writerStopped = new Promise((resolve) => writer.on('exit', resolve));
    undo.push(async () => {
      writer.kill('SIGKILL');
      await writerStopped;
    });

    // Runs once the agent has stopped (cleanup goes in reverse).
    undo.push(() => stopAllTracking(path.join(dir, 'cleanup-engine')));

    const certs = path.join(dir, 'certs');
    const certFiles = await generateCertificates({ outDir: certs });
    const q = JSON.stringify;
    const config = path.join(dir, 'config.toml');
    fs.writeFileSync(config, `
engine = ${q(ENGINE)}
database_file = ${q(path.join(dir, 'agent.db'))}
snapstore_destinations = [${q(snapstores)}]
auto_init_physical_disks = true
snap_store_file_size = ${32 * MiB}
[[snapstore_mapping]]
device = ${q(disk)}
location = ${q(snapstores)}
[api]
bind = "127.0.0.1"
port = ${API_PORT}
[api.tls]
certificate = ${q(certFiles.serverCert)}
key = ${q(certFiles.serverKey)}
ca_certificate = ${q(certFiles.caCert)}
[nbd]
port = ${NBD_PORT}
`);
    step(`starting the agent (engine ${ENGINE})`);
    const agent = await startAgent(config);
    step('agent ready');
    const agentExit = new Promise<number | null>((resolve) => agent.child.on('exit', (code) => resolve(code)));
    undo.push(async () => {
      if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
      await agentExit;
    });

    const httpsAgent = new https.Agent({
      ca: fs.readFileSync(certFiles.caCert), cert: fs.readFileSync(certFiles.clientCert), key: fs.readFileSync(certFiles.clientKey),
      keepAlive: true,
    });
    undo.push(() => httpsAgent.destroy());
    /** One request to the API; resolves with the response, whose body the caller reads. */
    const request = (method: string, route: string, options: { body?: unknown; headers?: Record<string, string> } = {}) =>
      new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
        const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
        const req = https.request({
          host: '127.0.0.1', servername: 'localhost', port: API_PORT, path: `/api/v1${route}`, method, agent: httpsAgent,
          headers: { ...(payload ? { 'content-type': 'application/json' } : {}), ...options.headers },
        }, resolve);
        req.on('error', reject);
        req.end(payload);
      });
    const json = async <T>(method: string, route: string, body?: unknown): Promise<T> => {
      const res = await request(method, route, { body });
      const chunks: Buffer[] = [];
      for await (const chunk of res) chunks.push(chunk as Buffer);
      const text = Buffer.concat(chunks).toString();
      assert.equal(res.statusCode, 200, `${method} ${route}: ${res.statusCode} ${text}`);
      return (text ? JSON.parse(text) : undefined) as T;
    };
    /** Streams an image (or a range of it) into `sink`. */
    const download = async (snapshotId: string, sink: NodeJS.WritableStream, range?: { start: number; end: number }): Promise<void> => {
      const res = await request('GET', `/snapshots/${snapshotId}/consume/${diskId}`,
        range ? { headers: { range: `bytes=${range.start}-${range.end}` } } : {});
      assert.equal(res.statusCode, range ? 206 : 200);
      await pipeline(res, sink);
    };

    const disks = await json<Array<{ id?: string; path: string }>>('GET', '/disks/');
    const diskId = disks.find((d) => d.path === origin.device)?.id;
    assert.ok(diskId, `${origin.device} is tracked: ${q(disks)}`);
    const size = origin.sizeBytes;

    // Snapshot 1, copied over HTTPS and over NBD while the writer goes on.
    assert.equal(writer.exitCode, null, 'the writer is at work');
    const first = await json<Snapshot>('POST', '/snapshots/', { tracked_disk_ids: [diskId] });
    const full = await json<Changes>('GET', `/snapshots/${first.snapshot_id}/changes/${diskId}/`);
    assert.equal(full.backup_type, 'full');
    assert.deepEqual(full.ranges, [{ start_offset: 0, length: size }]);
    const viaHttps = path.join(copies, 'https.raw');
    step(`snapshot ${first.snapshot_id}: HTTPS copy`);
    let started = Date.now();
    await download(first.snapshot_id, fs.createWriteStream(viaHttps));
    t.diagnostic(`HTTPS: ${size / MiB} MiB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    assert.equal(fs.statSync(viaHttps).size, size);

    const viaNbd = path.join(copies, 'nbd.raw');
    const exportName = `${first.snapshot_id}/${diskId}`;
    step(`NBD copy (${NBD_CLIENT})`);
    started = Date.now();
    if (NBD_CLIENT === 'nbdcopy') {
      const copy = await run('nbdcopy', [`nbds://127.0.0.1:${NBD_PORT}/${encodeURIComponent(exportName)}?tls-certificates=${certs}`, viaNbd],
        { timeoutMs: 30 * 60_000 });
      assert.equal(copy.code, 0, `nbdcopy: ${copy.stderr}`);
    } else {
      await nbdRawCopy(exportName, certs, size, viaNbd);
    }
    t.diagnostic(`NBD (${NBD_CLIENT}): ${size / MiB} MiB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const compare = await run('cmp', [viaHttps, viaNbd], { timeoutMs: 10 * 60_000 });
    assert.equal(compare.code, 0, `NBD and HTTPS give the same bytes: ${compare.stdout}${compare.stderr}`);
    fs.rmSync(viaNbd);

    step('e2fsck of the copy');
    const check = await run('e2fsck', ['-fn', viaHttps], { timeoutMs: 10 * 60_000 });
    assert.equal(check.code, 0, `e2fsck -fn of the first copy:\n${check.stdout}${check.stderr}`);
    const { generation_id: generation, snapshot_number: number } = first.volume_snapshots[0];
    await json('DELETE', `/snapshots/${first.snapshot_id}/`);

    // Snapshot 2: only the changed ranges travel, onto the first copy.
    assert.equal(writer.exitCode, null, 'the writer is still at work');
    step('second snapshot');
    const second = await json<Snapshot>('POST', '/snapshots/', { tracked_disk_ids: [diskId] });
    const changes = await json<Changes>('GET',
      `/snapshots/${second.snapshot_id}/changes/${diskId}/?previousGenerationID=${generation}&previousNumber=${number}`);
    assert.equal(changes.backup_type, 'incremental');
    const changed = changes.ranges.reduce((sum, r) => sum + r.length, 0);
    t.diagnostic(`incremental: ${changes.ranges.length} ranges, ${(changed / MiB).toFixed(2)} MiB of ${size / MiB} MiB`);
    assert.ok(changed > 0 && changed < size, `some, not all, of the disk changed: ${changed} bytes`);
    for (const range of changes.ranges) {
      await download(second.snapshot_id, fs.createWriteStream(viaHttps, { flags: 'r+', start: range.start_offset }),
        { start: range.start_offset, end: range.start_offset + range.length - 1 });
    }
    step('the second image, whole, to compare');
    const image = createHash('sha256');
    await download(second.snapshot_id, image);
    assert.equal(await sha256(viaHttps), image.digest('hex'), 'the first copy plus the changes is the second image');
    const recheck = await run('e2fsck', ['-fn', viaHttps], { timeoutMs: 10 * 60_000 });
    assert.equal(recheck.code, 0, `e2fsck -fn of the updated copy:\n${recheck.stdout}${recheck.stderr}`);
    await json('DELETE', `/snapshots/${second.snapshot_id}/`);

    // The agent's own client on the real module: a full copy, verified block by block against
    // the digests the native reader computes on the image device, then an incremental one while
    // the writer goes on.
    step('pull: full copy, then incremental');
    const pulled = path.join(copies, 'pull.raw');
    const pull = async (): Promise<{ mode: string; bytes_fetched: number; blocks_verified: number }> => {
      const done = await run(...agentCommand(['pull', '--agent', `https://localhost:${API_PORT}`,
        '--disk', diskId, '--out', pulled, '--certs', certs, '--json']), { timeoutMs: 20 * 60_000 });
      assert.equal(done.code, 0, `pull: ${done.stderr}`);
      return JSON.parse(done.stdout.trim().split('\n').at(-1)!) as { mode: string; bytes_fetched: number; blocks_verified: number };
    };
    const fullPull = await pull();
    assert.equal(fullPull.mode, 'full');
    assert.equal(fullPull.blocks_verified, Math.ceil(size / (4 * MiB)));
    const incrementalPull = await pull();
    assert.equal(incrementalPull.mode, 'incremental');
    t.diagnostic(`pull: full ${(fullPull.bytes_fetched / MiB).toFixed(1)} MiB fetched, incremental ${(incrementalPull.bytes_fetched / MiB).toFixed(2)} MiB`);
    assert.ok(incrementalPull.bytes_fetched < size, 'the incremental pull fetched less than the disk');
    const pulledCheck = await run('e2fsck', ['-fn', pulled], { timeoutMs: 10 * 60_000 });
    assert.equal(pulledCheck.code, 0, `e2fsck -fn of the pulled copy:\n${pulledCheck.stdout}${pulledCheck.stderr}`);

    step('stopping the agent');
    agent.child.kill('SIGTERM');
    assert.equal(await agentExit, 0, `the agent stops cleanly on SIGTERM:\n${agent.stderr().split('\n').slice(-10).join('\n')}`);
  });

/** Copies an export with the tests' raw NBD client, 4 MiB per read (for hosts without nbdcopy). */
async function nbdRawCopy(exportName: string, certsDir: string, size: number, target: string): Promise<void> {
  const file = (name: string): string => path.join(certsDir, name);
  const certs = {
    dir: certsDir, caCert: file('ca-cert.pem'), caKey: '', serverCert: file('server-cert.pem'), serverKey: file('server-key.pem'),
    clientCert: file('client-cert.pem'), clientKey: file('client-key.pem'),
  };
  const client = await connectReady(NBD_PORT, { tls: certs, exportName });
  const out = fs.openSync(target, 'w');
  try {
    for (let offset = 0; offset < size; offset += 4 * MiB) {
      const length = Math.min(4 * MiB, size - offset);
      client.sendRequest({ type: Command.READ, offset, length });
      const reply = await client.readSimpleReply();
      assert.equal(reply.error, 0, `NBD read at ${offset}`);
      fs.writeSync(out, await client.read(length), 0, length, offset);
    }
  } finally {
    fs.closeSync(out);
    client.destroy();
  }
}
