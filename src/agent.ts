// The agent's main job: build every component from the config, start them in order (engine,
// database, inventory, snapshot manager, servers), and stop them in reverse on SIGINT/SIGTERM.
// Kernel state (trackers, snapshots, snapstores) deliberately outlives the process.
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { createApp } from './api/app';
import { closeApiServer, createApiServer, listenApiServer } from './api/server';
import type { Config } from './config';
import { openDatabase } from './db/database';
import { AgentState } from './db/state';
import { SimulatedEngine } from './engine/simulated';
import type { SnapshotEngine } from './engine/types';
import { BlksnapEngine } from './engine/blksnap';
import { otherModuleLoaded, selectEngine, type EngineModule } from './engine/select';
import { VeeamsnapEngine } from './engine/veeamsnap';
import { SqliteExportRegistry } from './exports/registry';
import type { Logger } from './log';
import { queryBlockDevice } from './native/blockdev';
import { createNbdServer } from './nbd/server';
import type { AgentService } from './service';
import { currentBootId, Inventory } from './snapshots/inventory';
import { SnapshotManager } from './snapshots/manager';
import { DiskCatalog, SimulatedDiskCatalog, type DiskSource } from './storage/disks';

export interface RunningAgent {
  service: AgentService;
  apiUrl: string;
  nbdUrl: string;
  stop(): Promise<void>;
}

/** Where the engine keeps its own files: beside the database unless the config says otherwise. */
function engineStateDir(config: Config): string {
  return config.simulated.imageDir ?? path.join(path.dirname(config.databaseFile), 'engine');
}

function urlHost(address: string): string {
  return address.includes(':') ? `[${address}]` : address;
}

export async function startAgent(config: Config, log: Logger): Promise<RunningAgent> {
  const stack: Array<() => Promise<void> | void> = [];
  const stop = async (): Promise<void> => {
    while (stack.length > 0) {
      try {
        await stack.pop()!();
      } catch (err) {
        log.error({ err }, 'error while stopping');
      }
    }
  };
  try {
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

    const api = createApiServer({
      tls: config.api.tls,
      allowedClients: config.api.allowedClients,
      handler: createApp({ service, log }).callback(),
      log,
    });
    await listenApiServer(api, config.api.port, config.api.bind);
    stack.push(() => closeApiServer(api));
    const apiPort = (api.address() as AddressInfo).port;

    const nbd = createNbdServer({
      registry: new SqliteExportRegistry(state, manager),
      log,
      tls: { mode: config.nbd.tls, ...config.nbd.certificates },
      bind: config.nbd.bind,
      port: config.nbd.port,
      unixSocket: config.nbd.unixSocket ?? undefined,
      maxConnections: config.nbd.maxConnections,
    });
    const { port: nbdPort } = await nbd.listen();
    stack.push(() => nbd.close());

    const apiUrl = `https://${urlHost(config.api.bind)}:${apiPort}/api/v1`;
    const nbdUrl = `${config.nbd.tls === 'off' ? 'nbd' : 'nbds'}://${urlHost(config.nbd.bind)}:${nbdPort}`;
    log.info({ api: apiUrl, nbd: nbdUrl, engine: engine.kind }, 'agent ready');
    return { service, apiUrl, nbdUrl, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Runs until SIGINT or SIGTERM. */
export async function runAgent(config: Config, log: Logger): Promise<number> {
  log.info({ config: config.file, engine: config.engine }, 'agent starting');
  const agent = await startAgent(config, log);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  log.info({ signal }, 'agent stopping');
  await agent.stop();
  log.info('agent stopped');
  return 0;
}
