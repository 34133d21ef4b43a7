// kill -9 of a real agent process (simulated engine) at random moments of create, delete and
// download, each followed by a restart. After every restart:
// - every snapshot the API still lists reads its true point-in-time content;
// - for every disk free of snapshots: write, snapshot, and the incremental ranges since the last
//   good snapshot, applied to the copy of that snapshot, rebuild the new image exactly.
// The sequence of operations is fixed by a seed; the kills land at random moments spread over
// each operation's measured duration. CSA_KILL9_CYCLES and CSA_KILL9_SEED change the run.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { generateCertificates } from '../../src/cli/gen-certs';
import { writeDemoDisk } from '../../src/cli/demo';
import { request, type Response } from '../api/helpers/server';
import { simulatedAgentToml } from '../helpers/agent-config';
import { seeded } from '../helpers/seeded';
import { freePort } from '../helpers/ports';

const CYCLES = Number(process.env.CSA_KILL9_CYCLES ?? 20);
const SEED = Number(process.env.CSA_KILL9_SEED ?? 11);
const MiB = 1024 * 1024;
const DISK_SIZE = 16 * MiB;
const DISKS = ['disk0', 'disk1'];
const MAIN = path.join(__dirname, '..', '..', 'src', 'main.js');

const sha256 = (data: Buffer): string => crypto.createHash('sha256').update(data).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The agent as its own process, started from a config file like in production. */
class AgentProcess {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();

  constructor(private readonly configFile: string) {}

  /** Resolves once the agent logs that it is ready; rejects if it exits first. */
  async start(): Promise<void> {
    const child = spawn(process.execPath, [MAIN, 'serve', '--config', this.configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    let tail = '';
    await new Promise<void>((resolve, reject) => {
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        tail = (tail + chunk).slice(-20_000);
        if (tail.includes('"msg":"agent ready"')) resolve();
      });
      child.once('exit', (code, signal) => reject(new Error(`the agent exited (${code ?? signal}) before it was ready:\n${tail}`)));
    });
  }

  async kill(): Promise<void> {
    this.child?.kill('SIGKILL');
    await this.exited;
  }

  async stop(): Promise<void> {
    this.child?.kill('SIGTERM');
    await this.exited;
  }
}

interface SnapshotJson {
  snapshot_id: string;
  state: string;
  volume_snapshots: Array<{ snapshot_number: number; generation_id: string; original_device: { tracking_id: string } }>;
}
interface ChangesJson { backup_type: string; ranges: Array<{ start_offset: number; length: number }> }

/** What a snapshot must read: the content hash of each of its disks when it was taken. */
type Expected = Map<string, string>;

test(`kill -9 at random points of create, delete and download: ${CYCLES} cycles, seed ${SEED}`, { timeout: 1_800_000 }, async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-kill9-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const certs = path.join(dir, 'certs');
  await generateCertificates({ outDir: certs });
  fs.mkdirSync(path.join(dir, 'snapstores'));
  const diskFile = (disk: string): string => path.join(dir, `${disk}.img`);
  DISKS.forEach((disk, index) => writeDemoDisk(diskFile(disk), DISK_SIZE, index));
  const [apiPort, nbdPort] = [await freePort(), await freePort()];
  const configFile = path.join(dir, 'config.toml');
  // The engine keeps its files beside the database, as the agent does when no image_dir is set.
  fs.writeFileSync(configFile, simulatedAgentToml({
    dir, disks: DISKS.map(diskFile), certs, snapStoreFileSize: 4 * MiB, apiPort, nbdPort, engineDir: null,
  }));
  const ca = fs.readFileSync(path.join(certs, 'ca-cert.pem'), 'utf8');
  const credentials = { cert: fs.readFileSync(path.join(certs, 'client-cert.pem'), 'utf8'), key: fs.readFileSync(path.join(certs, 'client-key.pem'), 'utf8') };
  const api = (method: string, route: string, options: { body?: unknown; range?: string } = {}): Promise<Response> => request(apiPort, ca, `/api/v1${route}`, {
    method, credentials,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    headers: { ...(options.body === undefined ? {} : { 'content-type': 'application/json' }), ...(options.range === undefined ? {} : { range: options.range }) },
  });
  const json = async <T>(method: string, route: string, body?: unknown): Promise<T> => {
    const res = await api(method, route, { body });
    assert.equal(res.status, 200, `${method} ${route}: ${res.status} ${res.body.toString()}`);
    return (res.body.length > 0 ? JSON.parse(res.body.toString()) : undefined) as T;
  };
  const image = async (id: string, disk: string): Promise<Buffer> => {
    const res = await api('GET', `/snapshots/${id}/consume/${disk}`);
    assert.equal(res.status, 200, `download of ${id}/${disk}: ${res.status} ${res.body.toString()}`);
    return res.body;
  };

  const rng = seeded(SEED);
  const pick = <T>(items: T[]): T => items[Math.floor(rng() * items.length)];
  const agent = new AgentProcess(configFile);
  t.after(() => agent.stop());
  await agent.start();

  /** Snapshots the API answered for (or that survived a killed create), with what they must read. */
  const known = new Map<string, Expected>();
  /** The copy of each disk as of its last good snapshot, and that snapshot's numbers. */
  const replicas = new Map<string, { data: Buffer; generationId: string; number: number }>();
  /** Typical duration of each operation, measured when not killed: where kills are aimed. */
  const typical = new Map<string, number>([['create', 300], ['delete', 200], ['download', 300]]);
  const counts = { kills: { create: 0, delete: 0, download: 0 } as Record<string, number>, cutShort: 0, survivorsRead: 0, vanishedByDelete: 0, keptByKilledCreate: 0, incrementals: 0, changedBlocks: 0, shippedBytes: 0 };
  const diskHashes = (disks: string[]): Expected => new Map(disks.map((d) => [d, sha256(fs.readFileSync(diskFile(d)))]));
  const busyDisks = (): Set<string> => new Set([...known.values()].flatMap((e) => [...e.keys()]));

  async function timed<T>(kind: string, work: () => Promise<T>): Promise<T> {
    const started = performance.now();
    const result = await work();
    typical.set(kind, (typical.get(kind)! + (performance.now() - started)) / 2);
    return result;
  }

  /** The machine keeps working: a few 4 KiB writes of fresh bytes at random places. */
  function writeSomething(): void {
    for (let i = 1 + Math.floor(rng() * 4); i > 0; i--) {
      const fd = fs.openSync(diskFile(pick(DISKS)), 'r+');
      fs.writeSync(fd, crypto.randomBytes(4096), 0, 4096, Math.floor(rng() * (DISK_SIZE / 4096)) * 4096);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    }
  }

  /** Every listed snapshot reads back, byte for byte, what its disks held when it was taken. */
  async function checkSurvivors(killedCreate: Expected | null, killedDelete: string | null): Promise<void> {
    const listed = await json<SnapshotJson[]>('GET', '/snapshots/');
    for (const snapshot of listed) {
      const disks = snapshot.volume_snapshots.map((v) => v.original_device.tracking_id);
      let expected = known.get(snapshot.snapshot_id);
      if (expected === undefined) {
        assert.ok(killedCreate !== null && [...killedCreate.keys()].join() === disks.join(),
          `snapshot ${snapshot.snapshot_id} of ${disks.join()} was never asked for`);
        expected = killedCreate;
        known.set(snapshot.snapshot_id, expected);
        counts.keptByKilledCreate++;
      }
      assert.equal(snapshot.state, 'ok', `snapshot ${snapshot.snapshot_id} is healthy`);
      for (const disk of disks) {
        assert.equal(sha256(await timed('download', () => image(snapshot.snapshot_id, disk))), expected.get(disk),
          `snapshot ${snapshot.snapshot_id} reads its point-in-time content of ${disk}`);
        counts.survivorsRead++;
      }
    }
    for (const id of known.keys()) {
      if (listed.some((s) => s.snapshot_id === id)) continue;
      assert.equal(id, killedDelete, `snapshot ${id} vanished though nobody deleted it`);
      known.delete(id);
      counts.vanishedByDelete++;
    }
  }

  /** Snapshots each free disk and rebuilds its image from the last good copy and the changed ranges. */
  async function checkIncrementals(): Promise<void> {
    for (const disk of DISKS.filter((d) => !busyDisks().has(d))) {
      const snapshot = await timed('create', () => json<SnapshotJson>('POST', '/snapshots/', { tracked_disk_ids: [disk] }));
      const volume = snapshot.volume_snapshots[0];
      const replica = replicas.get(disk);
      const since = replica === undefined ? '' : `?previousGenerationID=${replica.generationId}&previousNumber=${replica.number}`;
      const changes = await json<ChangesJson>('GET', `/snapshots/${snapshot.snapshot_id}/changes/${disk}/${since}`);
      let data: Buffer;
      if (replica === undefined) {
        data = await image(snapshot.snapshot_id, disk);
      } else {
        assert.equal(changes.backup_type, 'incremental', `${disk}: still the generation of the last good snapshot`);
        data = Buffer.from(replica.data);
        for (const range of changes.ranges) {
          const res = await api('GET', `/snapshots/${snapshot.snapshot_id}/consume/${disk}`, { range: `bytes=${range.start_offset}-${range.start_offset + range.length - 1}` });
          assert.equal(res.status, 206);
          res.body.copy(data, range.start_offset);
          counts.shippedBytes += range.length;
        }
        counts.incrementals++;
      }
      const now = fs.readFileSync(diskFile(disk));
      if (replica !== undefined) {
        for (let offset = 0; offset < DISK_SIZE; offset += 256 * 1024) {
          if (!now.subarray(offset, offset + 256 * 1024).equals(replica.data.subarray(offset, offset + 256 * 1024))) counts.changedBlocks++;
        }
      }
      assert.ok(data.equals(now), `${disk}: the last good copy plus the changed ranges is the new image`);
      replicas.set(disk, { data, generationId: volume.generation_id, number: volume.snapshot_number });
      await timed('delete', () => json('DELETE', `/snapshots/${snapshot.snapshot_id}`));
    }
  }

  await checkIncrementals();
  for (let cycle = 0; cycle < CYCLES; cycle++) {
    const kind = pick(['create', 'delete', 'download']);
    t.diagnostic(`cycle ${cycle}: kill -9 during ${kind}`);
    // Set the stage without a kill: a free disk to snapshot, or a snapshot to delete or read.
    if (kind === 'create' && busyDisks().size === DISKS.length) {
      const id = pick([...known.keys()]);
      await json('DELETE', `/snapshots/${id}`);
      known.delete(id);
    }
    if (kind !== 'create' && known.size === 0) {
      const disks = DISKS.filter((d) => !busyDisks().has(d));
      const expected = diskHashes(disks);
      known.set((await json<SnapshotJson>('POST', '/snapshots/', { tracked_disk_ids: disks })).snapshot_id, expected);
    }
    writeSomething();
    const free = DISKS.filter((d) => !busyDisks().has(d));
    let killedCreate: Expected | null = null;
    let killedDelete: string | null = null;
    let operation: Promise<unknown>;
    if (kind === 'create') {
      const disks = rng() < 0.5 || free.length === 1 ? [pick(free)] : free;
      const expected = diskHashes(disks);
      killedCreate = expected;
      operation = json<SnapshotJson>('POST', '/snapshots/', { tracked_disk_ids: disks }).then((s) => {
        known.set(s.snapshot_id, expected);
        killedCreate = null;
      });
    } else if (kind === 'delete') {
      const id = pick([...known.keys()]);
      killedDelete = id;
      operation = json('DELETE', `/snapshots/${id}`).then(() => {
        known.delete(id);
        killedDelete = null;
      });
    } else {
      const id = pick([...known.keys()]);
      const [disk, hash] = pick([...known.get(id)!.entries()]);
      operation = image(id, disk).then((data) => assert.equal(sha256(data), hash, 'a download before the kill reads true'));
    }
    const settled = operation.then(() => 'answered', (err: unknown) => {
      // Only the kill may stop an operation: a refusal or a wrong answer is a failure.
      if (err instanceof assert.AssertionError) throw err;
      return 'cut';
    });
    await sleep(rng() * 1.25 * typical.get(kind)!);
    await agent.kill();
    counts.kills[kind]++;
    if ((await settled) === 'cut') counts.cutShort++;

    await agent.start();
    await checkSurvivors(killedCreate, killedDelete);
    await checkIncrementals();
  }
  t.diagnostic(`kills: ${JSON.stringify(counts.kills)}, ${counts.cutShort} cut an operation short; `
    + `survivor images read back: ${counts.survivorsRead}; snapshots kept by a killed create: ${counts.keptByKilledCreate}, `
    + `removed by a killed delete: ${counts.vanishedByDelete}; incrementals rebuilt: ${counts.incrementals} `
    + `(${counts.changedBlocks} changed CBT blocks, ${counts.shippedBytes} bytes shipped)`);
});
