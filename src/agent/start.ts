// The agent's main job: lock the state, build every component from the config, start them in
// order (engine, database, inventory, snapshot manager, servers), and stop them in reverse on
// SIGINT/SIGTERM after the servers drained. Kernel state (trackers, snapshots, snapstores)
// deliberately outlives the process.
import type { ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { createApp } from '../api/app';
import { createApiServer, listenApiServer } from '../api/server';
import type { Config } from '../config/config';
import { openDatabase } from '../db/database';
import { AgentState } from '../db/state';
import { SimulatedEngine } from '../engine/simulated';
import type { SnapshotEngine } from '../engine/types';
import { BlksnapEngine } from '../engine/blksnap';
import { otherModuleLoaded, selectEngine, type EngineModule } from '../engine/select';
import { VeeamsnapEngine } from '../engine/veeamsnap';
import { SqliteExportRegistry } from '../exports/registry';
import { reopenLogFile, type Logger } from '../core/log';
import { openConnections, registerMetricSources, trackedCbt } from '../metrics/metrics';
import { queryBlockDevice } from '../native/blockdev';
import { configureReaderPool } from '../native/reader';
import { createNbdServer, type NbdServer } from '../nbd/server';
import type { AgentService } from '../service';
import { listenFailure } from './startup';
import { lockState } from './state-lock';
import { notifySystemd } from './systemd';
import { currentBootId, Inventory } from '../inventory/inventory';
import { SnapshotManager } from '../snapshots/manager';
import { DiskCatalog, SimulatedDiskCatalog, type DiskSource } from '../storage/disks';
import { ReadLimits } from '../doors/limits';

export interface DrainOptions {
  /** How long downloads and NBD connections in progress may take to finish. */
  graceMs: number;
  /** Aborting it cuts them at once (a second signal). */
  cut?: AbortSignal;
}

/** What a drain had to cut when its grace ran out. */
export interface DrainReport {
  httpResponses: number;
  nbdConnections: number;
}

export interface RunningAgent {
  service: AgentService;
  /** The read-rate limits both doors share. */
  limits: ReadLimits;
  apiUrl: string;
  nbdUrl: string;
  /** Without options, connections are cut at once. */
  stop(drain?: DrainOptions): Promise<DrainReport>;
}

/** Where the engine keeps its own files: beside the database unless the config says otherwise. */
function engineStateDir(config: Config): string {
  return config.simulated.imageDir ?? path.join(path.dirname(config.databaseFile), 'engine');
}

function urlHost(address: string): string {
  return address.includes(':') ? `[${address}]` : address;
}

/** The API's responses being written, so that a stop can let them finish. */
class ResponseTracker {
  readonly inFlight = new Set<ServerResponse>();
  private draining = false;
  private waiters: Array<() => void> = [];

  constructor(server: HttpsServer) {
    server.on('request', (_req, res: ServerResponse) => {
      // While draining, keep-alive connections end with the answer they carry.
      if (this.draining && !res.headersSent) res.setHeader('Connection', 'close');
      this.inFlight.add(res);
      res.once('close', () => {
        this.inFlight.delete(res);
        if (this.inFlight.size === 0) this.waiters.splice(0).forEach((wake) => wake());
      });
    });
  }

  /** Resolves when no response is in flight. */
  drained(): Promise<void> {
    this.draining = true;
    if (this.inFlight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

/** Stops accepting at once, waits for what is in flight until the grace ends, then cuts the rest. */
async function drainServers(api: HttpsServer, responses: ResponseTracker, nbd: NbdServer, drain: DrainOptions, log: Logger): Promise<DrainReport> {
  // Called back (with ERR_SERVER_NOT_RUNNING) even when the start failed before listening.
  const apiClosed = new Promise<void>((resolve) => api.close(() => resolve()));
  const nbdDrained = nbd.drain(drain.graceMs, drain.cut);
  if (drain.graceMs > 0) {
    log.info({ httpResponses: responses.inFlight.size, nbdConnections: nbd.connectionCount, graceMs: drain.graceMs },
      'no longer accepting connections: waiting for those in progress');
  }
  let timer: NodeJS.Timeout | undefined;
  const graceOver = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, drain.graceMs);
    if (drain.cut?.aborted === true) resolve();
    drain.cut?.addEventListener('abort', () => resolve(), { once: true });
  });
  await Promise.race([responses.drained(), graceOver]);
  const nbdConnections = await nbdDrained;
  clearTimeout(timer);
  const httpResponses = responses.inFlight.size;
  // Idle keep-alive connections, and whatever did not finish in time.
  api.closeAllConnections();
  await apiClosed;
  return { httpResponses, nbdConnections };
}

export async function startAgent(config: Config, log: Logger): Promise<RunningAgent> {
  const stack: Array<() => Promise<void> | void> = [];
  let drainOptions: DrainOptions = { graceMs: 0 };
  let report: DrainReport = { httpResponses: 0, nbdConnections: 0 };
  const stop = async (drain: DrainOptions = { graceMs: 0 }): Promise<DrainReport> => {
    drainOptions = drain;
    while (stack.length > 0) {
      try {
        await stack.pop()!();
      } catch (err) {
        log.error({ err }, 'error while stopping');
      }
    }
    return report;
  };
  try {
    // Before the engine or the inventory look at anything: another agent may be mid-operation.
    const lock = lockState(config.databaseFile);
    stack.push(() => lock.release());

    let engine: SnapshotEngine;
    let source: DiskSource;
    let engineModule: EngineModule | null = null;
    if (config.engine === 'simulated') {
      const simulated = new SimulatedEngine({ disks: config.simulated.disks, stateDir: engineStateDir(config) });
      await simulated.start();
      engine = simulated;
      source = new SimulatedDiskCatalog(simulated.disks(), { log });
    } else {
      engineModule = await selectEngine(config.engine);
      log.info({ engine: engineModule.engine, module: engineModule.module, moduleVersion: engineModule.version }, 'snapshot engine selected');
      const other = config.engine === 'auto' ? null : otherModuleLoaded(engineModule.engine);
      if (other !== null) log.warn({ module: other }, `${other} is loaded too: two snapshot modules on the same disks interfere; unload it`);
      engine = engineModule.engine === 'blksnap'
        ? new BlksnapEngine({ stateDir: engineStateDir(config) })
        : new VeeamsnapEngine({ stateDir: engineStateDir(config) });
      await engine.start();
      source = new DiskCatalog({ log, destinations: config.snapstoreDestinations });
    }
    stack.push(() => engine.close());

    const state = new AgentState(openDatabase(config.databaseFile));
    stack.push(() => {
      state.db.close();
    });

    const inventory = new Inventory({
      engine, state, log, source,
      destinations: config.snapstoreDestinations,
      configMappings: config.snapstoreMappings,
      autoInitPhysicalDisks: config.autoInitPhysicalDisks,
      requireBlockDevices: engine.kind !== 'simulated',
      bootId: currentBootId(),
    });
    await inventory.start();
    stack.push(() => inventory.stop());

    const manager = new SnapshotManager({
      engine, state, log,
      snapStoreFileSize: config.snapStoreFileSize,
      locationDevice: (location) => inventory.locationDevice(location),
      diskSize: (file) => queryBlockDevice(file).size,
    });
    await manager.start();
    stack.push(() => manager.stop());

    const service: AgentService = {
      listDisks: (options) => inventory.listDisks(options),
      getDisk: (id) => inventory.getDisk(id),
      listSnapshots: () => manager.listSnapshots(),
      getSnapshot: (id) => manager.getSnapshot(id),
      createSnapshot: (ids) => manager.createSnapshot(ids),
      deleteSnapshot: (id) => manager.deleteSnapshot(id),
      changes: (snapshotId, diskId, request) => manager.changes(snapshotId, diskId, request),
      openImage: (snapshotId, diskId) => manager.openImage(snapshotId, diskId),
      listSnapstores: () => manager.listSnapstores(),
      listLocations: () => inventory.listLocations(),
      listMappings: () => inventory.listMappings(),
      createMapping: (diskId, location) => inventory.createMapping(diskId, location),
      engineInfo: () => ({ engine: engine.kind, module: engineModule?.module ?? null, moduleVersion: engineModule?.version ?? null }),
    };

    // One budget for both doors, and the reader threads' I/O priority: see "Protecting the workload".
    const limits = new ReadLimits(config.limits);
    if (config.limits.ioPriority !== null) configureReaderPool({ ioPriority: config.limits.ioPriority });
    const api = createApiServer({
      tls: config.api.tls,
      allowedClients: config.api.allowedClients,
      handler: createApp({ service, log, health: {
        engine: async () => {
          await engine.listTrackers();
          return engine.kind;
        },
        database: () => state.setMeta('health_checked_at', new Date().toISOString()),
        growthStepBytes: config.snapStoreFileSize,
      }, consume: { limits } }).callback(),
      log,
    });
    const responses = new ResponseTracker(api);
    const nbd = createNbdServer({
      registry: new SqliteExportRegistry(state, manager),
      log,
      tls: { mode: config.nbd.tls, ...config.nbd.certificates },
      bind: config.nbd.bind,
      port: config.nbd.port,
      unixSocket: config.nbd.unixSocket ?? undefined,
      maxConnections: config.nbd.maxConnections,
      limits,
      allowedClients: config.nbd.allowedClients,
    });
    stack.push(async () => {
      report = await drainServers(api, responses, nbd, drainOptions, log);
    });
    try {
      await listenApiServer(api, config.api.port, config.api.bind);
    } catch (err) {
      throw listenFailure('api.port', `${urlHost(config.api.bind)}:${config.api.port}`, err);
    }
    const apiPort = (api.address() as AddressInfo).port;

    let nbdPort: number;
    try {
      ({ port: nbdPort } = await nbd.listen());
    } catch (err) {
      throw (err as { port?: number }).port === undefined && config.nbd.unixSocket !== null
        ? listenFailure('nbd.unix_socket', config.nbd.unixSocket, err)
        : listenFailure('nbd.port', `${urlHost(config.nbd.bind)}:${config.nbd.port}`, err);
    }
    stack.push(registerMetricSources({
      service, cbt: () => trackedCbt(engine, state), httpConnections: () => openConnections(api), nbdConnections: () => nbd.connectionCount,
    }));

    const apiUrl = `https://${urlHost(config.api.bind)}:${apiPort}/api/v1`;
    const nbdUrl = `${config.nbd.tls === 'off' ? 'nbd' : 'nbds'}://${urlHost(config.nbd.bind)}:${nbdPort}`;
    log.info({ api: apiUrl, nbd: nbdUrl, engine: engine.kind, limits: config.limits }, 'agent ready');
    return { service, limits, apiUrl, nbdUrl, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Runs until SIGINT or SIGTERM: tells systemd when it is ready and when it stops, reopens the
 * log file on SIGHUP, and on the first signal lets downloads and NBD connections finish for
 * shutdown_grace_seconds; a second signal cuts them at once.
 */
export async function runAgent(config: Config, log: Logger, onReady?: (agent: RunningAgent) => void): Promise<number> {
  const reopen = (): void => {
    if (config.logFile === null) return;
    reopenLogFile(log);
    log.info({ logFile: config.logFile }, 'SIGHUP: log file reopened');
  };
  const cut = new AbortController();
  let received: (signal: NodeJS.Signals) => void = () => {};
  const stopSignal = new Promise<NodeJS.Signals>((resolve) => {
    received = resolve;
  });
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (!stopping) {
      stopping = true;
      received(signal);
    } else if (!cut.signal.aborted) {
      log.warn({ signal }, 'second signal: cutting downloads and NBD connections now');
      cut.abort();
    }
  };
  process.on('SIGHUP', reopen);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    log.info({ config: config.file, engine: config.engine }, 'agent starting');
    let agent: RunningAgent;
    try {
      agent = await startAgent(config, log);
    } catch (err) {
      log.debug({ err }, 'agent failed to start');
      throw err;
    }
    notifySystemd('READY=1', log);
    onReady?.(agent);
    const signal = await stopSignal;
    notifySystemd('STOPPING=1', log);
    log.info({ signal, graceSeconds: config.shutdownGraceSeconds }, 'agent stopping: letting downloads and NBD connections finish');
    const report = await agent.stop({ graceMs: config.shutdownGraceSeconds * 1000, cut: cut.signal });
    if (report.httpResponses > 0 || report.nbdConnections > 0) {
      log.warn({ httpDownloads: report.httpResponses, nbdConnections: report.nbdConnections }, 'cut what had not finished');
    }
    log.info('agent stopped');
    return 0;
  } finally {
    process.off('SIGHUP', reopen);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
