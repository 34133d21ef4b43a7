// Crash injection for the restart tests: when CSA_FAULT_POINT names a point, the process kills
// itself there with SIGKILL, as a power cut or the OOM killer would. Unset, it does nothing.
export function faultPoint(name: string): void {
  if (process.env.CSA_FAULT_POINT === name) process.kill(process.pid, 'SIGKILL');
}
