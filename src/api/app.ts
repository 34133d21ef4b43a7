// The koa application of the REST API: access log, error mapping, the routes under /api/v1,
// a JSON 405 with Allow for a known path asked with another method, and a JSON 404 for
// everything else.
import type Router from '@koa/router';
import Koa, { type Context, type Middleware } from 'koa';
import type { Logger } from '../core/log';
import { observeHttpRequest } from '../metrics/metrics';
import type { AgentService } from './service';
import { DEFAULT_BODY_LIMIT } from './body';
import { clientIdentity } from '../doors/allow-list';
import { isAgentError } from '../core/errors';
import { DEFAULT_CONSUME_OPTIONS, type ConsumeOptions } from './consume';
import type { HealthProbes } from './health';
import { errorResponse, HttpError, methodNotAllowed, routeNotFound } from './errors';
import { apiRouter } from './routes';
import { HOST_SOURCES, type SystemInfoSources } from '../host/system';

export interface AppOptions {
  service: AgentService;
  log: Logger;
  consume?: Partial<ConsumeOptions>;
  /** Largest accepted request body in bytes; 64 KiB unless set. */
  bodyLimit?: number;
  /** Where systeminfo reads the host; tests point it at fixtures. */
  systemInfo?: SystemInfoSources;
  /** What GET /health probes beyond the service. */
  health: HealthProbes;
}

/** The template of the route that served the request (set by the router), or null. */
function routeTemplate(ctx: Context): string | null {
  const matched = (ctx as Context & { _matchedRoute?: unknown })._matchedRoute;
  return typeof matched === 'string' ? matched : null;
}

/** One line per request and its metrics when the response is over (or the connection is gone), with who asked. */
function accessLog(log: Logger): Middleware {
  return async (ctx, next) => {
    const started = process.hrtime.bigint();
    const { res } = ctx;
    // Read now: the socket is detached from the request once the response is over.
    const { socket } = ctx.req;
    const client = clientIdentity(socket);
    const remote = socket.remoteAddress;
    res.once('close', () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      observeHttpRequest(ctx.method, routeTemplate(ctx), res.statusCode, seconds);
      log.info({
        method: ctx.method,
        url: ctx.originalUrl,
        status: res.statusCode,
        length: res.getHeader('Content-Length'),
        complete: res.writableFinished,
        ms: seconds * 1000,
        remote,
        client: client?.subject ?? null,
      }, 'request');
    });
    await next();
  };
}

/**
 * Maps every failure to its status and {error, details} body. Once bytes have gone out the
 * status cannot change, so the connection is destroyed: a consumer must see a failed transfer,
 * never a short one that looks complete.
 */
function errorResponses(log: Logger): Middleware {
  return async (ctx, next) => {
    try {
      await next();
    } catch (err) {
      // A client gone mid-request (or cut off by the request timeout) cannot be answered either.
      const gone = isAgentError(err, 'cancelled');
      if (ctx.res.headersSent || gone) {
        if (gone) log.info({ url: ctx.originalUrl }, 'the connection closed before the response was complete');
        else log.error({ err, url: ctx.originalUrl }, 'response failed after its headers were sent: connection destroyed');
        ctx.res.destroy();
        return;
      }
      const response = errorResponse(err);
      if (response.unexpected) log.error({ err, method: ctx.method, url: ctx.originalUrl }, 'request failed');
      ctx.respond = true;
      for (const name of ctx.res.getHeaderNames()) ctx.res.removeHeader(name);
      ctx.set(response.headers);
      ctx.status = response.status;
      ctx.body = response.body;
    }
  };
}

/**
 * HTTP/1.1 requires Host (RFC 9112 3.2; an empty value is allowed). Node's own check answers
 * with an empty body, so server.ts turns it off and it is done here.
 */
const requireHost: Middleware = async (ctx, next) => {
  if (ctx.req.httpVersion === '1.1' && ctx.req.headers.host === undefined) {
    throw new HttpError(400, 'Bad Request', 'an HTTP/1.1 request must have a Host header');
  }
  await next();
};

/** Reached when no route took the request: 405 if some route serves the path, else 404. */
function unrouted(router: Router): Middleware {
  return (ctx) => {
    const allowed = new Set(router.match(ctx.path, ctx.method).path.flatMap((layer) => layer.methods));
    if (allowed.size === 0) throw routeNotFound();
    throw methodNotAllowed(ctx.method, [...allowed]);
  };
}

export function createApp(options: AppOptions): Koa {
  const app = new Koa();
  // Failures are logged by errorResponses; koa's default handler would print to stderr.
  app.silent = true;
  const router = apiRouter({
    service: options.service,
    log: options.log,
    consume: { ...DEFAULT_CONSUME_OPTIONS, ...options.consume },
    bodyLimit: options.bodyLimit ?? DEFAULT_BODY_LIMIT,
    systemInfo: options.systemInfo ?? HOST_SOURCES,
    health: options.health,
  });
  app.use(accessLog(options.log));
  app.use(errorResponses(options.log));
  app.use(requireHost);
  app.use(router.routes());
  app.use(unrouted(router));
  return app;
}
