// An NBD server in a process of its own, so a test can measure its memory while clients attack
// it. It listens with TLS required over the fixture's export and answers the parent's messages:
// 'ready' (sent first) carries the port and the fixture; 'stats' the connection count and the
// peak RSS since the last 'reset'.
import { makeFixture, removeFixture, startServer } from './server';

export interface FloodServerReady {
  type: 'ready';
  port: number;
  dir: string;
  imageFile: string;
}

export interface FloodServerStats {
  type: 'stats';
  connections: number;
  rss: number;
  peakRss: number;
}

/** What the parent may change: handshake slots and the deadline, so that only the bound under test limits memory. */
export interface FloodServerSettings {
  maxConnections: number;
  maxHandshakes: number;
  handshakeTimeoutMs: number;
}

function collectedRss(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().rss;
}

async function main(): Promise<void> {
  const settings = JSON.parse(process.argv[2] ?? '{}') as FloodServerSettings;
  const fixture = makeFixture();
  const { server, port } = await startServer(fixture, settings);
  let peakRss = collectedRss();
  const sampler = setInterval(() => { peakRss = Math.max(peakRss, process.memoryUsage().rss); }, 20);
  process.on('message', (message: string) => {
    if (message === 'reset') peakRss = collectedRss();
    if (message === 'stats' || message === 'reset') {
      const rss = collectedRss();
      process.send!({ type: 'stats', connections: server.connectionCount, rss, peakRss: Math.max(peakRss, rss) } satisfies FloodServerStats);
    }
  });
  process.once('disconnect', () => {
    clearInterval(sampler);
    void server.close().finally(() => {
      removeFixture(fixture);
      process.exit(0);
    });
  });
  process.send!({ type: 'ready', port, dir: fixture.dir, imageFile: fixture.imageFile } satisfies FloodServerReady);
}

void main();
