// Fault injection. For the restart tests: when CSA_FAULT_POINT names a point, the process kills
// itself there with SIGKILL, as a power cut or the OOM killer would. For in-process tests,
// injectFault makes the next pass through a point throw instead. Unset, it does nothing.
const injected = new Map<string, Error>();

/** The next pass through `name` throws `error`: a failing step, or a bug, at that point. */
export function injectFault(name: string, error: Error): void {
  injected.set(name, error);
}

export function faultPoint(name: string): void {
  const error = injected.get(name);
  if (error !== undefined) {
    injected.delete(name);
    throw error;
  }
  if (process.env.CSA_FAULT_POINT === name) process.kill(process.pid, 'SIGKILL');
}
