// The agent's composition: lock the state, build every component from the config, bring them
// up through the one recovery path (recovery.ts), start both servers, and stop everything in
// reverse. Kernel state (trackers, snapshots, snapstores) deliberately outlives the process.
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { createApp } from '../api/app';
import { createApiServer, listenApiServer } from '../api/server';
import type { Config } from '../config/config';
import { AgentState } from '../db/state';
import { SimulatedEngine } from '../engine/simulated/engine';
import type { SnapshotEngine } from '../engine/types';
import { BlksnapEngine } from '../engine/blksnap';
import { otherModuleLoaded, selectEngine, type EngineModule } from '../engine/select';
import { VeeamsnapEngine } from '../engine/veeamsnap';
import { ExportRegistry } from '../exports/registry';
import type { Logger } from '../core/log';
import { openConnections, registerMetricSources, type CbtState } from '../metrics/metrics';
import { queryBlockDevice } from '../native/blockdev';
import { configureReaderPool } from '../native/reader';
import { createNbdServer } from '../nbd/server';
import type { AgentService } from '../api/service';
import { listenFailure } from './startup';
import { lockState } from './state-lock';
import { drainServers, ResponseTracker, type DrainOptions, type DrainReport } from './drain';
import { currentBootId } from '../host/boot';
import { Inventory } from '../inventory/inventory';
import { recover } from './recovery';
import { SnapshotManager } from '../snapshots/manager';
import { DiskCatalog } from '../storage/catalog';
import type { DiskSource } from '../storage/disks';
import { SimulatedDiskCatalog } from '../storage/simulated-catalog';
import { ReadLimits } from '../doors/limits';
import { sameDevice } from '../core/devices';
import { API_PREFIX } from '../exports/types';

export interface RunningAgent {
  service: AgentService;
  /** The read-rate limits both doors share. */
  limits: ReadLimits;
  apiUrl: string;
  nbdUrl: string;
  /** Without options, connections are cut at once. */
  stop(drain?: DrainOptions): Promise<DrainReport>;
}

/** Where the simulated engine keeps its model of the kernel: beside the database unless the config says otherwise. */
function simulatedStateDir(config: Config): string {
  return config.simulated.imageDir ?? path.join(path.dirname(config.databaseFile), 'engine');
}

function urlHost(address: string): string {
  return address.includes(':') ? `[${address}]` : address;
}

/** The CBT generation and number of every tracked disk the engine tracks now (for the metrics). */
async function trackedCbt(engine: SnapshotEngine, state: AgentState): Promise<CbtState[]> {
  const trackers = await engine.listTrackers();
  return state.disks.list().flatMap((disk) => {
    const tracker = trackers.find(({ device }) => sameDevice(device, disk));
    return tracker === undefined ? [] : [{ disk: disk.id, generationId: tracker.generationId, snapshotNumber: tracker.snapshotNumber }];
  });
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
    const state = AgentState.open(config.databaseFile);
    stack.push(() => state.close());

    if (config.engine === 'simulated') {
      // The model of the kernel is up before the agent, as the kernel is.
      const simulated = new SimulatedEngine({ disks: config.simulated.disks, stateDir: simulatedStateDir(config) });
      await simulated.start();
      engine = simulated;
      source = new SimulatedDiskCatalog(simulated.disks(), { log });
    } else {
      engineModule = await selectEngine(config.engine);
      log.info({ engine: engineModule.engine, module: engineModule.module, moduleVersion: engineModule.version }, 'snapshot engine selected');
      const other = config.engine === 'auto' ? null : otherModuleLoaded(engineModule.engine);
      if (other !== null) log.warn({ module: other }, `${other} is loaded too: two snapshot modules on the same disks interfere; unload it`);
      const memory = state.engineMemory(engineModule.engine);
      engine = engineModule.engine === 'blksnap' ? new BlksnapEngine({ memory }) : new VeeamsnapEngine({ memory });
      source = new DiskCatalog({ log, destinations: config.snapstoreDestinations });
    }
    stack.push(() => engine.close());

    const inventory = new Inventory({
      engine, state, log, source,
      destinations: config.snapstoreDestinations,
      configMappings: config.snapstoreMappings,
      autoInitPhysicalDisks: config.autoInitPhysicalDisks,
      requireBlockDevices: engine.kind !== 'simulated',
    });
    stack.push(() => inventory.stop());

    const registry = new ExportRegistry({ state, engine });
    const manager = new SnapshotManager({
      engine, state, exports: registry, log,
      snapStoreFileSize: config.snapStoreFileSize,
      locationDevice: (location) => inventory.locationDevice(location),
      diskSize: (file) => queryBlockDevice(file).size,
    });
    stack.push(() => manager.stop());
    await recover({ state, engine, inventory, manager, destinations: config.snapstoreDestinations, bootId: currentBootId(), log });

    const service: AgentService = {
      listDisks: (options) => inventory.listDisks(options),
      getDisk: (id) => inventory.getDisk(id),
      listSnapshots: () => manager.listSnapshots(),
      getSnapshot: (id) => manager.getSnapshot(id),
      createSnapshot: (ids) => manager.createSnapshot(ids),
      deleteSnapshot: (id) => manager.deleteSnapshot(id),
      changes: (snapshotId, diskId, request) => manager.changes(snapshotId, diskId, request),
      openImage: (snapshotId, diskId) => registry.openByVolume(snapshotId, diskId),
      knownZeros: (snapshotId, diskId) => registry.knownZeros(snapshotId, diskId),
      listSnapstores: () => manager.listSnapstores(),
      listLocations: () => inventory.listLocations(),
      listMappings: () => inventory.listMappings(),
      createMapping: (diskId, location) => inventory.createMapping(diskId, location),
      engineInfo: () => ({ engine: engine.kind, module: engineModule?.module ?? null, moduleVersion: engineModule?.version ?? null }),
    };

    // One budget for both doors, and the reader threads' I/O priority: see "Protecting the workload".
    const limits = new ReadLimits(config.limits);
    if (config.limits.ioPriority !== null) configureReaderPool({ ioPriority: config.limits.ioPriority });
    const app = createApp({ service, log, health: {
      engine: async () => {
        await engine.listTrackers();
        return engine.kind;
      },
      database: () => state.meta.set('health_checked_at', new Date().toISOString()),
      growthStepBytes: config.snapStoreFileSize,
    }, consume: { limits } }).callback();
    const api = createApiServer({
      tls: config.api.tls,
      allowedClients: config.api.allowedClients,
      handler: app,
      log,
    });
    const responses = new ResponseTracker(api);
    const nbd = createNbdServer({
      registry,
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
      snapshots: () => manager.listSnapshots(), snapstores: () => manager.listSnapstores(), cbt: () => trackedCbt(engine, state), httpConnections: () => openConnections(api), nbdConnections: () => nbd.connectionCount,
    }));

    const apiUrl = `https://${urlHost(config.api.bind)}:${apiPort}${API_PREFIX}`;
    const nbdUrl = `${config.nbd.tls === 'off' ? 'nbd' : 'nbds'}://${urlHost(config.nbd.bind)}:${nbdPort}`;
    log.info({ api: apiUrl, nbd: nbdUrl, engine: engine.kind, limits: config.limits }, 'agent ready');
    return { service, limits, apiUrl, nbdUrl, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
