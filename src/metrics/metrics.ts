// Every Prometheus metric of the agent, defined here and nowhere else. Served at
// GET /api/v1/metrics, behind the API's mTLS and allow-list (it names disks and snapshots).
//
// Two kinds:
// - events, counted where they happen through the small functions below (one-line calls from
//   the API, the NBD server and the watchers): bytes served, requests, snapstore growth;
// - state (connections, snapshots, snapstore space, CBT), read at scrape time from the running
//   agent's sources, so it can never drift from what the agent itself reports.
// One registry per process: counters are process-wide; the state sources are those of the
// agent started last (a process runs one agent; tests read differences).
import type { Server } from 'node:net';
import client from 'prom-client';

const PREFIX = 'coriolis_agent_';
const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry, prefix: PREFIX });

export type Protocol = 'http' | 'nbd';

const servedBytes = new client.Counter({
  name: `${PREFIX}served_bytes_total`,
  help: 'Snapshot image bytes sent to consumers, by protocol and tracked disk.',
  labelNames: ['protocol', 'disk'] as const,
  registers: [registry],
});
const httpRequests = new client.Counter({
  name: `${PREFIX}http_requests_total`,
  help: 'REST requests answered, by method, route template and status.',
  labelNames: ['method', 'route', 'status'] as const,
  registers: [registry],
});
const httpDuration = new client.Histogram({
  name: `${PREFIX}http_request_duration_seconds`,
  help: 'Time from a REST request to the end of its response, by method, route template and status.',
  labelNames: ['method', 'route', 'status'] as const,
  buckets: [0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60, 600],
  registers: [registry],
});
const snapstoreGrowths = new client.Counter({
  name: `${PREFIX}snapstore_growths_total`,
  help: 'Snapstore growth attempts after the initial allocation, by tracked disk and result (ok, failed).',
  labelNames: ['disk', 'result'] as const,
  registers: [registry],
});
const snapstoreOverflows = new client.Counter({
  name: `${PREFIX}snapstore_overflows_total`,
  help: 'Snapstores that ran out of space (their snapshot failed), by tracked disk.',
  labelNames: ['disk'] as const,
  registers: [registry],
});

const connections = new client.Gauge({
  name: `${PREFIX}connections`, help: 'Open connections, by protocol.', labelNames: ['protocol'] as const, registers: [registry],
});
const snapshots = new client.Gauge({
  name: `${PREFIX}snapshots`, help: 'Live snapshots, by state (ok, failed).', labelNames: ['state'] as const, registers: [registry],
});
const snapstoreAllocated = new client.Gauge({
  name: `${PREFIX}snapstore_allocated_bytes`,
  help: 'Space given to a snapshot\'s snapstore, by snapshot and tracked disk.',
  labelNames: ['snapshot_id', 'disk'] as const,
  registers: [registry],
});
const snapstoreUsed = new client.Gauge({
  name: `${PREFIX}snapstore_used_bytes`,
  help: 'Copy-on-write bytes in a snapshot\'s snapstore as last reported, by snapshot and tracked disk.',
  labelNames: ['snapshot_id', 'disk'] as const,
  registers: [registry],
});
const cbtGeneration = new client.Gauge({
  name: `${PREFIX}cbt_generation_info`,
  help: 'The current CBT generation of each tracked disk (value 1).',
  labelNames: ['disk', 'generation_id'] as const,
  registers: [registry],
});
const cbtNumber = new client.Gauge({
  name: `${PREFIX}cbt_snapshot_number`,
  help: 'Number of the last snapshot of each tracked disk in its CBT generation.',
  labelNames: ['disk'] as const,
  registers: [registry],
});

// ---- events ---------------------------------------------------------------------------------

export function countServedBytes(protocol: Protocol, disk: string, bytes: number): void {
  servedBytes.inc({ protocol, disk }, bytes);
}

// Methods Node's parser accepts but no route serves collapse into one label value.
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** `route` is the router's template (never the raw path, which clients choose); null when none matched. */
export function observeHttpRequest(method: string, route: string | null, status: number, seconds: number): void {
  const labels = { method: KNOWN_METHODS.has(method) ? method : 'other', route: route ?? 'unmatched', status: String(status) };
  httpRequests.inc(labels);
  httpDuration.observe(labels, seconds);
}

export function countSnapstoreGrowth(disk: string, result: 'ok' | 'failed'): void {
  snapstoreGrowths.inc({ disk, result });
}

export function countSnapstoreOverflow(disk: string): void {
  snapstoreOverflows.inc({ disk });
}

// ---- state ----------------------------------------------------------------------------------

export interface CbtState {
  disk: string;
  generationId: string;
  snapshotNumber: number;
}

/** What the metrics read of the agent's snapshots and snapstores (snapshots/types.ts fits it). */
export interface MetricSources {
  snapshots(): Promise<Array<{ id: string; state: { status: 'ok' | 'failed' }; volumes: Array<{ trackedDiskId: string }> }>>;
  snapstores(): Promise<Array<{ trackedDiskId: string; allocatedBytes: number; usedBytes: number }>>;
  cbt(): Promise<CbtState[]>;
  httpConnections(): Promise<number>;
  nbdConnections(): number;
}

let sources: MetricSources | null = null;

/** Makes the running agent's state scrapeable; returns what undoes it (for the agent's stop). */
export function registerMetricSources(next: MetricSources): () => void {
  sources = next;
  return () => {
    if (sources === next) sources = null;
  };
}

export function openConnections(server: Server): Promise<number> {
  return new Promise((resolve, reject) => server.getConnections((err, count) => (err === null ? resolve(count) : reject(err))));
}

async function refreshState(from: MetricSources): Promise<void> {
  const [snapshotList, snapstoreList, cbt, http] = await Promise.all([
    from.snapshots(), from.snapstores(), from.cbt(), from.httpConnections(),
  ]);
  for (const gauge of [connections, snapshots, snapstoreAllocated, snapstoreUsed, cbtGeneration, cbtNumber]) gauge.reset();
  connections.set({ protocol: 'http' }, http);
  connections.set({ protocol: 'nbd' }, from.nbdConnections());
  for (const state of ['ok', 'failed'] as const) {
    snapshots.set({ state }, snapshotList.filter((snapshot) => snapshot.state.status === state).length);
  }
  // A disk is in at most one live snapshot, which owns its snapstore.
  const snapshotOfDisk = new Map(snapshotList.flatMap((snapshot) => snapshot.volumes.map((volume) => [volume.trackedDiskId, snapshot.id] as const)));
  for (const store of snapstoreList) {
    const labels = { snapshot_id: snapshotOfDisk.get(store.trackedDiskId) ?? '', disk: store.trackedDiskId };
    snapstoreAllocated.set(labels, store.allocatedBytes);
    snapstoreUsed.set(labels, store.usedBytes);
  }
  for (const { disk, generationId, snapshotNumber } of cbt) {
    cbtGeneration.set({ disk, generation_id: generationId }, 1);
    cbtNumber.set({ disk }, snapshotNumber);
  }
}

/** The exposition text; state comes from the registered sources, read now. */
export async function scrapeMetrics(): Promise<{ contentType: string; body: string }> {
  if (sources !== null) await refreshState(sources);
  return { contentType: registry.contentType, body: await registry.metrics() };
}
