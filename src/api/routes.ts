// The route table of agent-reference 1.3, plus ours (health, metrics, openapi.json; each
// described in openapi.json), dispatching to the AgentService. Each handler validates
// (params.ts, body.ts), calls the service and serialises (json.ts); errors are left to the
// edge middleware. Paths match with or without a trailing slash.
import Router from '@koa/router';
import type { Logger } from '../core/log';
import { scrapeMetrics } from '../metrics/metrics';
import type { AgentService } from './service';
import { readBody } from './body';
import { collectHealth, type HealthProbes } from './health';
import OPENAPI from './openapi.json';
import { consumeImage, type ConsumeOptions } from './consume';
import {
  changesToJSON, diskToJSON, locationToJSON, mappingToJSON, snapshotToJSON, snapstoreToJSON,
} from './json';
import { parseChangesQuery, parseCreateMappingBody, parseCreateSnapshotBody, parseDiskListQuery, parseMarkZeroRanges } from './params';
import { digestRoute, markZeroChanges } from './digests';
import type { SystemInfoSources } from '../host/system';
import { collectSystemInfo } from './systeminfo';
import { API_PREFIX } from '../exports/types';

export interface RouteOptions {
  service: AgentService;
  log: Logger;
  consume: ConsumeOptions;
  bodyLimit: number;
  systemInfo: SystemInfoSources;
  health: HealthProbes;
}

export function apiRouter(options: RouteOptions): Router {
  const { service, log } = options;
  const router = new Router({ prefix: API_PREFIX, sensitive: true });

  router.get('/disks', async (ctx) => {
    const disks = await service.listDisks(parseDiskListQuery(ctx.query));
    ctx.body = disks.map((entry) => diskToJSON(entry.disk, entry.trackingId ?? undefined));
  });
  router.get('/disks/:diskId', async (ctx) => {
    const entry = await service.getDisk(ctx.params.diskId);
    ctx.body = diskToJSON(entry.disk, entry.trackingId ?? undefined);
  });

  router.get('/snapshots', async (ctx) => {
    ctx.body = (await service.listSnapshots()).map(snapshotToJSON);
  });
  router.post('/snapshots', async (ctx) => {
    const trackedDiskIds = parseCreateSnapshotBody(await readBody(ctx, { limit: options.bodyLimit, allowForm: false }));
    ctx.body = snapshotToJSON(await service.createSnapshot(trackedDiskIds));
  });
  router.get('/snapshots/:snapshotId', async (ctx) => {
    ctx.body = snapshotToJSON(await service.getSnapshot(ctx.params.snapshotId));
  });
  router.delete('/snapshots/:snapshotId', async (ctx) => {
    await service.deleteSnapshot(ctx.params.snapshotId);
    ctx.type = 'application/json';
    ctx.body = '';
  });
  router.get('/snapshots/:snapshotId/changes/:diskId', async (ctx) => {
    const request = parseChangesQuery(ctx.query);
    const markZeros = parseMarkZeroRanges(ctx.query);
    const changes = await service.changes(ctx.params.snapshotId, ctx.params.diskId, request);
    ctx.body = changesToJSON(markZeros ? await markZeroChanges(service, changes, ctx.res, ctx.req.socket, options.consume.limits) : changes);
  });
  router.get('/snapshots/:snapshotId/consume/:diskId', consumeImage(service, options.consume));
  router.get('/snapshots/:snapshotId/digests/:diskId', digestRoute(service, options.consume.limits));

  router.get('/snapstores', async (ctx) => {
    ctx.body = (await service.listSnapstores()).map(snapstoreToJSON);
  });
  router.get('/snapstorelocations', async (ctx) => {
    ctx.body = (await service.listLocations()).map(locationToJSON);
  });
  router.get('/snapstoremappings', async (ctx) => {
    ctx.body = (await service.listMappings()).map(mappingToJSON);
  });
  router.post('/snapstoremappings', async (ctx) => {
    const request = parseCreateMappingBody(await readBody(ctx, { limit: options.bodyLimit, allowForm: true }));
    ctx.body = mappingToJSON(await service.createMapping(request.trackedDiskId, request.locationPath));
  });

  router.get('/systeminfo', async (ctx) => {
    ctx.body = await collectSystemInfo(service, log, options.systemInfo);
  });
  router.get('/health', async (ctx) => {
    const health = await collectHealth(service, options.health, log);
    ctx.status = health.status === 'failing' ? 503 : 200;
    ctx.set('Cache-Control', 'no-store');
    ctx.body = health;
  });
  router.get('/metrics', async (ctx) => {
    const { contentType, body } = await scrapeMetrics();
    ctx.set({ 'Content-Type': contentType, 'Cache-Control': 'no-store' });
    ctx.body = body;
  });
  // The description of every route here, kept beside them (test/api/openapi.test.ts checks both ways).
  router.get('/openapi.json', (ctx) => {
    ctx.body = OPENAPI;
  });

  return router;
}
