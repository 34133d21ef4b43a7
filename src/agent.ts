// The agent's main job: start every component in order, stop them in reverse on SIGINT/SIGTERM.
import type { Config } from './config';
import type { Logger } from './log';

export async function runAgent(config: Config, log: Logger): Promise<number> {
  log.info({ config: config.file, engine: config.engine }, 'agent starting');
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      log.info({ signal }, 'agent stopping');
      resolve();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  log.info('agent stopped');
  return 0;
}
