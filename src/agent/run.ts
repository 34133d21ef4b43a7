// `serve`: the agent as a service. Tells systemd when it is ready and when it stops, reopens the
// log file on SIGHUP, and stops on SIGINT or SIGTERM after letting work in progress finish.
import type { Config } from '../config/config';
import { reopenLogFile, type Logger } from '../core/log';
import { startAgent, type RunningAgent } from './start';
import { notifySystemd } from './systemd';

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
