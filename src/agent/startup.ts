// What stops the agent from starting, worded for the operator: one line naming the key or path
// at fault. Configuration mistakes are `invalid` AgentErrors (config.ts, exit status 2); what
// else prevents a start (a busy port, another agent on the same state) is `unavailable`
// (exit status 1).
import { unavailable, type AgentError } from '../core/errors';

export const MINIMUM_NODE_MAJOR = 20;

/** Why this Node cannot run the agent, or null when it can. */
export function unsupportedNode(version: string): string | null {
  const major = Number(/^v?(\d+)\./.exec(version)?.[1]);
  if (major >= MINIMUM_NODE_MAJOR) return null;
  return `Node.js ${MINIMUM_NODE_MAJOR} or newer is required, this is ${version} (see the README, "From a checkout"; the release brings its own Node)`;
}

/** Exits before the rest of the agent is loaded: on an old Node its native modules fail with a stack trace. */
export function exitOnUnsupportedNode(): void {
  const problem = unsupportedNode(process.versions.node);
  if (problem === null) return;
  process.stderr.write(`coriolis-snapshot-agent: ${problem}\n`);
  process.exit(1);
}

/** A listen() failure, naming the config key of the port or socket. */
export function listenFailure(key: string, where: string, err: unknown): AgentError {
  const code = (err as NodeJS.ErrnoException).code;
  const reason = code === 'EADDRINUSE' ? 'is already in use (another agent or program is listening there)'
    : code === 'EACCES' ? 'cannot be opened by this user'
    : code === 'EADDRNOTAVAIL' ? 'is not an address of this machine'
    : `cannot be listened on: ${(err as Error).message}`;
  return unavailable(`${key}: ${where} ${reason}`, err);
}
