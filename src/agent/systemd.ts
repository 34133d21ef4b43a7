// Readiness and stopping notices for systemd (Type=notify): one datagram to $NOTIFY_SOCKET, as
// sd_notify(3) sends. Outside systemd the variable is unset and nothing is sent.
import type { Logger } from '../core/log';
import { notifySocket } from '../native/process';

export function notifySystemd(state: 'READY=1' | 'STOPPING=1', log: Logger, env: NodeJS.ProcessEnv = process.env): void {
  const socket = env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '') return;
  try {
    notifySocket(socket, state);
  } catch (err) {
    // systemd then times the start out or kills on stop: say why in the log.
    log.warn({ err, socket }, `cannot tell systemd ${state}`);
  }
}
