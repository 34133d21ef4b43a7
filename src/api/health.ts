// GET /health: can this agent take and serve snapshots right now, and is any live snapshot in
// trouble? Checked on every request, nothing cached:
// - failing (503): the engine (kernel module) or the database does not answer, so no snapshot
//   can be taken or deleted;
// - degraded (200): the agent works, but a snapshot failed, a snapstore could not grow ("at
//   risk" of overflowing), or a snapstore location has less free space than one growth step;
// - ok (200) otherwise.
// Answers name snapshots, disks and locations (as the other routes do), never errno text or
// internal paths of a failed probe: those go to the log.
import type { Logger } from '../core/log';
import type { AgentService } from './service';
import { isAgentError } from '../core/errors';
import { VERSION } from '../core/version';

/** Probes of what the service does not expose; each throws when its part is unusable. */
export interface HealthProbes {
  /** A cheap query through the engine (the kernel module underneath); resolves to the engine kind. */
  engine(): Promise<string>;
  /** A small write to the database. */
  database(): void;
  /** snap_store_file_size: a location with less free space than this cannot grow a snapstore. */
  growthStepBytes: number;
  /** A probe that does not answer in this time counts as failed; 10 s unless set. */
  timeoutMs?: number;
}

export type HealthStatus = 'ok' | 'degraded' | 'failing';

export interface CheckJson {
  status: 'ok' | 'failing';
  details?: string;
}

export interface HealthJson {
  status: HealthStatus;
  /** Why the status is not ok, one line per problem; empty when ok. */
  problems: string[];
  agent_version: string;
  engine: CheckJson & { kind?: string };
  database: CheckJson;
  snapstore_locations: Array<{ path: string; available_capacity: number; total_capacity: number; status: 'ok' | 'low' }>;
  failed_snapshots: Array<{ snapshot_id: string; reason: string }>;
  at_risk_snapstores: Array<{ id: string; tracked_disk_id: string; reason: string }>;
}

// Health must answer even when what it probes hangs.
const PROBE_TIMEOUT_MS = 10_000;

class ProbeTimeout extends Error {}

function withTimeout<T>(probe: () => Promise<T> | T, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ProbeTimeout(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([Promise.resolve().then(probe), timeout]).finally(() => clearTimeout(timer));
}

/** What a client may read of a failed probe: our own words or the errno name, never raw text. */
function publicReason(err: unknown): string {
  if (isAgentError(err) || err instanceof ProbeTimeout) return err.message;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : 'see the agent log';
}

type Checked<T> = { ok: true; value: T } | { ok: false; problem: string };

async function check<T>(log: Logger, timeoutMs: number, what: string, probe: () => Promise<T> | T): Promise<Checked<T>> {
  try {
    return { ok: true, value: await withTimeout(probe, timeoutMs) };
  } catch (err) {
    log.error({ err }, `health: ${what} failed`);
    return { ok: false, problem: `${what} failed: ${publicReason(err)}` };
  }
}

const checkJson = (checked: Checked<unknown>): CheckJson => (checked.ok ? { status: 'ok' } : { status: 'failing', details: checked.problem });

export async function collectHealth(service: AgentService, probes: HealthProbes, log: Logger): Promise<HealthJson> {
  const timeoutMs = probes.timeoutMs ?? PROBE_TIMEOUT_MS;
  const [engine, database, locations, snapshots, snapstores] = await Promise.all([
    check(log, timeoutMs, 'the engine query', () => probes.engine()),
    check(log, timeoutMs, 'the database write', () => probes.database()),
    check(log, timeoutMs, 'listing the snapstore locations', () => service.listLocations()),
    check(log, timeoutMs, 'listing the snapshots', () => service.listSnapshots()),
    check(log, timeoutMs, 'listing the snapstores', () => service.listSnapstores()),
  ]);
  const snapstoreLocations = (locations.ok ? locations.value : []).map((location) => ({
    path: location.path,
    available_capacity: location.availableBytes,
    total_capacity: location.totalBytes,
    status: location.availableBytes < probes.growthStepBytes ? 'low' as const : 'ok' as const,
  }));
  const failedSnapshots = (snapshots.ok ? snapshots.value : []).flatMap((snapshot) =>
    snapshot.state.status === 'failed' ? [{ snapshot_id: snapshot.id, reason: snapshot.state.reason }] : []);
  const atRisk = (snapstores.ok ? snapstores.value : []).flatMap(({ id, trackedDiskId, atRisk: reason }) =>
    reason === null ? [] : [{ id, tracked_disk_id: trackedDiskId, reason }]);

  // Without the engine or the database nothing can be created, deleted or trusted.
  const failing = [engine, database, snapshots].flatMap((checked) => (checked.ok ? [] : [checked.problem]));
  const degraded = [
    ...[locations, snapstores].flatMap((checked) => (checked.ok ? [] : [checked.problem])),
    ...failedSnapshots.map(({ snapshot_id: id, reason }) => `snapshot ${id} failed: ${reason}`),
    ...atRisk.map(({ tracked_disk_id: disk, reason }) => `the snapstore of disk ${disk} is at risk: ${reason}`),
    ...snapstoreLocations.filter(({ status }) => status === 'low').map(({ path, available_capacity: free }) =>
      `snapstore location ${path} has ${free} bytes free, less than one growth step of ${probes.growthStepBytes}`),
  ];
  return {
    status: failing.length > 0 ? 'failing' : degraded.length > 0 ? 'degraded' : 'ok',
    problems: [...failing, ...degraded],
    agent_version: VERSION,
    engine: engine.ok ? { status: 'ok', kind: engine.value } : checkJson(engine),
    database: checkJson(database),
    snapstore_locations: snapstoreLocations,
    failed_snapshots: failedSnapshots,
    at_risk_snapstores: atRisk,
  };
}
